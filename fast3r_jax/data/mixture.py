"""Mixtures of data sources with a fixed number of samples per source and epoch.

`Mixture([(80_000, co3d), (80_000, habitat)])` concatenates the sources, each resized to exactly its
size: every epoch, source k is viewed through a fresh permutation of its indices (seeded by
epoch + 777, as in the reference), repeated until `size` items and cut there. Small sources are
repeated, large ones subsampled, and the subsample changes from epoch to epoch.

`parse_mixture("80_000 @ co3d(root='/data/co3d', split='train') + 1000 @ habitat(...)")` builds one
from a config string. Only known source names are accepted and every argument must be a Python
literal (parsed with `ast.literal_eval`; nothing is evaluated).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence

import numpy as np

from fast3r_jax.data.readers import READERS, Source, View, load_sample

RESAMPLE_SEED = 777  # the reference seeds the per-epoch resampling with epoch + 777


class Mixture:
    """Concatenation of sources, source k contributing exactly sizes[k] samples per epoch."""

    def __init__(self, entries: Sequence[tuple[int, Source]], seed: int = RESAMPLE_SEED):
        if not entries:
            raise ValueError("a mixture needs at least one (size, source) entry")
        for size, source in entries:
            if not isinstance(size, (int, np.integer)) or size <= 0:
                raise ValueError(f"mixture sizes must be positive integers, got {size!r}")
            if len(source) == 0:
                raise ValueError(f"mixture source {source!r} is empty")
        self.entries = [(int(size), source) for size, source in entries]
        self.seed = seed
        self._ends = np.cumsum([size for size, _ in self.entries])
        self._mappings: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._ends[-1])

    def mapping(self, k: int, epoch: int) -> np.ndarray:
        """(sizes[k],) indices into source k used in `epoch`."""
        key = (k, epoch)
        if key not in self._mappings:
            if len(self._mappings) >= 2 * len(self.entries):  # keep about one epoch cached
                self._mappings.clear()
            size, source = self.entries[k]
            perm = np.random.default_rng(epoch + self.seed).permutation(len(source))
            self._mappings[key] = np.tile(perm, -(-size // len(perm)))[:size]
        return self._mappings[key]

    def locate(self, index: int, epoch: int = 0) -> tuple[Source, int]:
        """(source, index in that source) of mixture sample `index` in `epoch`."""
        if not 0 <= index < len(self):
            raise IndexError(f"mixture index {index} out of range for {len(self)} samples")
        k = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[k - 1]) if k else 0
        return self.entries[k][1], int(self.mapping(k, epoch)[index - start])

    def __getitem__(self, index: int, rng: np.random.Generator | None = None) -> list[View]:
        """Sample `index` of epoch 0 (the input pipeline uses `locate` with the current epoch)."""
        source, local = self.locate(index)
        return load_sample(source, local, np.random.default_rng(index) if rng is None else rng)


SOURCE_NAMES = (*READERS, "synthetic")


def source_class(name: str) -> Callable[..., Source]:
    """The constructor of a known data source (the synthetic scenes are imported on use only)."""
    if name == "synthetic":
        from fast3r_jax.data.synthetic import SyntheticScenes

        return SyntheticScenes
    if name not in READERS:
        raise ValueError(f"unknown data source {name!r}; known: {list(SOURCE_NAMES)}")
    return READERS[name]


def _literal(node: ast.AST, spec: str) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError as err:
        raise ValueError(f"mixture arguments must be literals, got {ast.get_source_segment(spec, node)!r}") from err


Term = tuple[int | None, str, list[object], dict[str, object]]  # (size or None, source name, args, kwargs)


def _parse_term(term: ast.AST, spec: str) -> Term:
    size = None
    if isinstance(term, ast.BinOp) and isinstance(term.op, ast.MatMult):
        size = _literal(term.left, spec)
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"mixture size must be an integer, got {ast.get_source_segment(spec, term.left)!r}")
        term = term.right
    if not (isinstance(term, ast.Call) and isinstance(term.func, ast.Name)):
        raise ValueError(f"expected 'N @ name(key=value, ...)', got {ast.get_source_segment(spec, term)!r}")
    source_class(term.func.id)  # known name
    if any(kw.arg is None for kw in term.keywords):
        raise ValueError(f"'**' arguments are not supported in {ast.get_source_segment(spec, term)!r}")
    args = [_literal(a, spec) for a in term.args]
    kwargs = {kw.arg: _literal(kw.value, spec) for kw in term.keywords}
    return size, term.func.id, args, kwargs


def _terms(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _terms(node.left) + _terms(node.right)
    return [node]


def mixture_terms(spec: str | Sequence[str]) -> list[Term]:
    """The terms of a mixture spec (see `parse_mixture`), parsed but not built: nothing is read."""
    terms = []
    for text in [spec] if isinstance(spec, str) else list(spec):
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            raise ValueError(f"cannot parse mixture spec {text!r}: {err.msg}") from err
        terms += [_parse_term(term, text.strip()) for term in _terms(tree.body)]
    return terms


def parse_mixture(spec: str | Sequence[str], seed: int = RESAMPLE_SEED) -> Mixture:
    """Mixture from `"N @ name(k=v, ...) + ..."` (or a list of such strings); a term without
    `N @` keeps its source's own length."""
    entries = []
    for size, name, args, kwargs in mixture_terms(spec):
        source = source_class(name)(*args, **kwargs)
        entries.append((len(source) if size is None else size, source))
    return Mixture(entries, seed)
