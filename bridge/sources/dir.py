"""The directory source (``--source dir:PATH``): Kubernetes objects from YAML files.

Every ``*.yaml``/``*.yml`` file under the directory (recursively; multi-document
files and ``kind: List`` are fine) is converted with
:func:`bridge.sources.convert.parse_object` and fed to the
:class:`bridge.store.Store`. Objects are tracked per file:

- a changed file is re-read and applied like a watch event (objects it no
  longer holds are deleted, new or changed ones upserted; equal ones cost
  nothing in the store);
- a file that fails to read or parse (YAML error, a bad object) becomes a
  diagnostic naming the file and the fix, and the objects it held before stay
  exactly as they were — a half-saved file that does not parse never drops
  routes (a file rewritten in place can still be read between truncation and
  write as a shorter file that parses: write files by rename, as editors and
  ConfigMap volumes do). A file that held objects and is found empty
  within a couple of seconds of its last write is taken as one being
  rewritten and applied only once it stays empty past that window;
- a deleted file removes its objects;
- a missing or unreadable directory is a diagnostic too, never an empty world;
- objects of kinds meshbridge does not read (a Deployment beside a Service)
  are skipped with a warning;
- the same object in two files: the first file in path order wins, the other
  file gets a warning.

Watching is by polling ``stat`` (mtime in ns, size, inode, device) every
``poll_interval`` seconds rather than inotify: it needs no dependency, works
on every filesystem including network mounts and Kubernetes ConfigMap volumes
(whose atomic ``..data`` symlink swap inotify watchers commonly miss), catches
editors that save by rename, and costs one ``stat`` per file per interval —
nothing for the tens to hundreds of files this source is meant for. A file
modified within the last couple of seconds is re-read on every scan until it
settles, because two writes inside one tick of the filesystem's timestamp
clock can leave mtime, size and inode all unchanged ("racy" files, as git
calls them); its text is compared first, so an unchanged one is not parsed
again. Paths
with a component starting with ``.`` are skipped (editor swap files and
ConfigMap volumes' ``..2024_..`` directories, which would duplicate every
object).

File reads happen in a worker thread; the store is only touched on the event
loop. This module does no network I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.model.diagnostics import Diagnostic, Severity
from bridge.model.k8s import K8sObject, Kind, ObjectRef
from bridge.sources.convert import InvalidObject, UnsupportedKind, parse_object
from bridge.store import Store

SUFFIXES = (".yaml", ".yml")
KEEP_FIX = "the objects this file held before stay in use until it parses"

StatKey = tuple[int, int, int, int]
# A file modified less than this before a scan may change again without its stat changing.
RACY_NS = 2_000_000_000


@dataclass(slots=True)
class _FileState:
    stat: StatKey
    digest: bytes = b""
    racy: bool = True
    objects: dict[ObjectRef, K8sObject] = field(default_factory=dict)
    error: Diagnostic | None = None  # the last read/parse failed: objects are the last good
    warnings: tuple[Diagnostic, ...] = ()


@dataclass(frozen=True, slots=True)
class _Read:
    """The result of reading one file (made in the worker thread)."""

    stat: StatKey
    objects: dict[ObjectRef, K8sObject] | None  # None: the read failed, keep the old ones
    error: Diagnostic | None = None
    warnings: tuple[Diagnostic, ...] = ()
    digest: bytes = b""
    racy: bool = False
    same_text: bool = False  # re-read a racy file and found the text unchanged


@dataclass(frozen=True, slots=True)
class _Scan:
    reads: dict[str, _Read]  # changed or new files
    removed: frozenset[str]
    root_error: Diagnostic | None = None


class DirSource:
    """Loads and watches one directory; one instance per ``dir:PATH``."""

    def __init__(self, store: Store, root: str | os.PathLike[str], poll_interval: float = 0.25):
        self.store = store
        self.root = Path(root)
        self.name = f"dir:{root}"
        self.poll_interval = poll_interval
        self._files: dict[str, _FileState] = {}
        self._holders: dict[ObjectRef, set[str]] = {}
        self._root_error: Diagnostic | None = None
        self.scans = 0  # completed scans, for tests and /debug
        store.register_source(self.name)

    # -- running ---------------------------------------------------------------

    def load(self) -> None:
        """Read the directory once, apply it and mark the source synced (no watching)."""
        self._apply(self._collect())
        self.store.mark_synced(self.name)

    async def run(self) -> None:
        """Load, mark synced, then apply file changes until cancelled."""
        self._apply(await asyncio.to_thread(self._collect))
        self.store.mark_synced(self.name)
        while True:
            # Polling interval, not a wait for a condition: see the module docstring.
            await asyncio.sleep(self.poll_interval)
            self._apply(await asyncio.to_thread(self._collect))

    async def rescan(self) -> None:
        """One scan now (tests and a SIGHUP-style trigger); ``run`` keeps polling too."""
        self._apply(await asyncio.to_thread(self._collect))

    def objects_of(self, path: str | os.PathLike[str]) -> dict[ObjectRef, K8sObject]:
        """The objects currently attributed to one file (its last good parse)."""
        state = self._files.get(str(path))
        return dict(state.objects) if state else {}

    # -- reading (worker thread; no store access) ---------------------------------

    def _collect(self) -> _Scan:
        try:
            if not self.root.is_dir():
                raise NotADirectoryError(f"{self.root} is not a directory")
            paths = self._walk()
        except OSError as exc:
            return _Scan(
                {},
                frozenset(),
                Diagnostic(
                    ref=self._file_ref(str(self.root)),
                    field="",
                    message=f"cannot read the source directory: {exc.strerror or exc}",
                    fix="create the directory or fix its permissions; the objects read from it "
                    "before stay in use",
                    code="source.dir.unreadable",
                ),
            )
        reads: dict[str, _Read] = {}
        started = time.time_ns()
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue  # removed between the walk and the stat: the next scan sees it gone
            key: StatKey = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
            known = self._files.get(path)
            if known is not None and known.stat == key and not known.racy:
                continue
            racy = st.st_mtime_ns > started - RACY_NS
            held = known is not None and bool(known.objects)
            reads[path] = self._read(path, key, racy, known.digest if known else None, held)
        removed = frozenset(self._files.keys() - set(paths))
        return _Scan(reads, removed)

    def _walk(self) -> list[str]:
        found: list[str] = []

        def fail(exc: OSError) -> None:
            raise exc

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=fail):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith(".") and f.endswith(SUFFIXES):
                    p = os.path.join(dirpath, f)
                    if os.path.isfile(p):
                        found.append(p)
        return sorted(found)

    def _read(
        self,
        path: str,
        key: StatKey,
        racy: bool,
        known_digest: bytes | None,
        held: bool,
    ) -> _Read:
        ref = self._file_ref(path)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            if racy and held and not data.strip():
                # Emptied just now while it held objects: most likely a file
                # being rewritten in place, read between truncation and
                # write. Keep its objects and read it again next scan; once
                # it has stayed empty past the racy window, it is applied.
                return _Read(key, None, racy=True, same_text=True)
            digest = hashlib.sha256(data).digest()
            if digest == known_digest:
                return _Read(key, None, racy=racy, digest=digest, same_text=True)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return _Read(
                key,
                None,
                Diagnostic(
                    ref,
                    "",
                    f"cannot read file: {problem}",
                    f"fix the file's permissions or encoding; {KEEP_FIX}",
                    code="source.file.unreadable",
                ),
            )
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            where = ""
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                where = f" at line {mark.line + 1}, column {mark.column + 1}"
            problem = getattr(exc, "problem", None) or str(exc)
            return _Read(
                key,
                None,
                Diagnostic(
                    ref,
                    "",
                    f"not valid YAML: {problem}{where}",
                    f"correct the YAML syntax; {KEEP_FIX}",
                    code="source.file.yaml",
                ),
                digest=digest,
                racy=racy,
            )
        objects: dict[ObjectRef, K8sObject] = {}
        warnings: list[Diagnostic] = []
        many = len(docs) > 1
        for i, doc in enumerate(_expand_lists(docs)):
            where = f"{path} (document {i + 1})" if many else path
            try:
                obj = parse_object(doc, where)
            except UnsupportedKind as exc:
                warnings.append(
                    Diagnostic(
                        ref,
                        f"document {i + 1}",
                        f"skipped: {exc.problem}",
                        "remove it from the directory if the warning bothers you",
                        Severity.WARNING,
                        "source.file.unsupported_kind",
                    )
                )
                continue
            except InvalidObject as exc:
                label = f"document {i + 1}" if many else ""
                obj_name = f"{exc.obj} " if exc.obj else ""
                return _Read(
                    key,
                    None,
                    Diagnostic(
                        ref,
                        ", ".join(p for p in (label, exc.field) if p),
                        f"{obj_name}is invalid: {exc.problem}",
                        f"fix the object; {KEEP_FIX}",
                        code="source.file.object",
                    ),
                    digest=digest,
                    racy=racy,
                )
            if obj.ref in objects:
                warnings.append(
                    Diagnostic(
                        ref,
                        f"document {i + 1}",
                        f"{obj.ref} appears more than once in this file; the last one is used",
                        "keep one copy of each object",
                        Severity.WARNING,
                        "source.file.duplicate",
                    )
                )
            objects[obj.ref] = obj
        return _Read(key, objects, None, tuple(warnings), digest, racy)

    # -- applying (event loop) ------------------------------------------------

    def _apply(self, scan: _Scan) -> None:
        self.scans += 1
        self._root_error = scan.root_error
        if scan.root_error is not None:
            self._publish_diagnostics()
            return
        affected: set[ObjectRef] = set()
        for path in scan.removed:
            gone = self._files.pop(path)
            for ref in gone.objects:
                affected.add(ref)
                self._holders[ref].discard(path)
        for path, read in scan.reads.items():
            state = self._files.setdefault(path, _FileState(read.stat))
            state.stat = read.stat
            state.racy = read.racy
            if read.same_text:
                continue
            state.digest = read.digest
            state.error = read.error
            if read.objects is None:
                continue  # keep the last good objects of this file
            state.warnings = read.warnings
            for ref in state.objects.keys() - read.objects.keys():
                affected.add(ref)
                self._holders[ref].discard(path)
            for ref in read.objects:
                affected.add(ref)
                self._holders.setdefault(ref, set()).add(path)
            state.objects = read.objects
        for ref in sorted(affected):
            holders = self._holders.get(ref)
            if not holders:
                self._holders.pop(ref, None)
                self.store.delete(self.name, ref)
            else:
                self.store.upsert(self.name, self._files[min(holders)].objects[ref])
        self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        diags: list[Diagnostic] = []
        if self._root_error is not None:
            diags.append(self._root_error)
        for state in self._files.values():
            if state.error is not None:
                diags.append(state.error)
            diags.extend(state.warnings)
        for ref, holders in self._holders.items():
            if len(holders) > 1:
                winner, *others = sorted(holders)
                diags.extend(
                    Diagnostic(
                        self._file_ref(p),
                        "",
                        f"{ref} is also defined in {winner}, which is used",
                        "keep each object in one file",
                        Severity.WARNING,
                        "source.dir.duplicate",
                    )
                    for p in others
                )
        self.store.set_source_diagnostics(self.name, diags)

    @staticmethod
    def _file_ref(path: str) -> ObjectRef:
        return ObjectRef(Kind.FILE, "", path)


def _expand_lists(docs: list[Any]) -> list[Any]:
    """Flatten ``kind: List`` documents (``kubectl get -o yaml`` output) into their items."""
    out: list[Any] = []
    for doc in docs:
        items = doc.get("items") if isinstance(doc, dict) else None
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(items, list):
            out.extend(items)
        else:
            out.append(doc)
    return out
