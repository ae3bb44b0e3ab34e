"""Resolve: World → IR (placeholder until the resolver lands)."""
