"""Protocol-faithful stand-ins for peers that cannot run on a test machine.

Real client libraries (kubernetes, py-consul, grpc) talk to these over
loopback sockets. Each stand-in says in its docstring which parts of the real
protocol it implements and what it leaves out.
"""
