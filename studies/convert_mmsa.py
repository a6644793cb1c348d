"""Convert an MMSA pickle once into the safe .npz format that the ``mmsa`` source reads by default.

    python studies/convert_mmsa.py aligned_50.pkl --trust-pickle
    python studies/convert_mmsa.py unaligned_50.pkl --trust-pickle --out mosei_unaligned_50.npz
    python studies/convert_mmsa.py --smoke-test

(with ``fsrf`` installed, ``pip install -e .``, or ``PYTHONPATH=.`` from the repository root).

A pickle runs code when it is loaded, so ``--trust-pickle`` is required: pass it only for files from a
source you trust (thuiar/MMSA's releases). The output (default: the input's name with ``.npz``) holds
the checked data, non-finite features already replaced by 0 (each replacement counted in a warning),
and is written whole or not at all. A bad file prints ``error: <message>`` and exits with code 2.
The layout is documented in ``fsrf/readers.py``.
"""

from __future__ import annotations

import pickle
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from fsrf.errors import InputError
from fsrf.readers import convert_mmsa, read_mmsa_npz


def _smoke_test() -> None:
    """Convert a tiny made-up pickle and read it back, in a temporary folder."""
    rng = np.random.default_rng(0)
    data = {
        name: {
            "raw_text": np.array(["a", "b"], dtype=object),
            "id": np.array(["v$_$1", "v$_$2"], dtype=object),
            "regression_labels": np.array([-1.0, 2.0], dtype=np.float32),
            "audio": rng.normal(size=(2, 4, 5)).astype(np.float32),
            "vision": rng.normal(size=(2, 3, 20)).astype(np.float32),
            "text_bert": np.ones((2, 3, 6)),
        }
        for name in ("train", "valid", "test")
    }
    with tempfile.TemporaryDirectory() as folder:
        pkl = Path(folder) / "smoke.pkl"
        pkl.write_bytes(pickle.dumps(data))
        splits = read_mmsa_npz(convert_mmsa(pkl, pkl.with_suffix(".npz"), trust_pickle=True))
    print(f"smoke test ok: {', '.join(f'{k} {len(v)}' for k, v in splits.items())}")


def main(argv: list[str] | None = None) -> int:
    from fsrf.errors import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pickle", nargs="?", type=Path, help="MMSA file, e.g. aligned_50.pkl")
    parser.add_argument("--trust-pickle", action="store_true", help="allow loading the pickle (runs its code)")
    parser.add_argument("--out", type=Path, help="output .npz (default: the input's name with .npz)")
    parser.add_argument("--smoke-test", action="store_true", help="convert a tiny made-up file and exit")
    args = parser.parse_args(argv)
    if args.smoke_test:
        _smoke_test()
        return 0
    if args.pickle is None:
        parser.error("the pickle to convert is required")

    out = args.out if args.out is not None else args.pickle.with_suffix(".npz")
    with warnings.catch_warnings(record=True) as caught:  # shown as one line each, after success only
        warnings.simplefilter("always")
        try:
            written = convert_mmsa(args.pickle, out, trust_pickle=args.trust_pickle)
        except InputError as exc:
            print("error: " + " ".join(str(exc).split()), file=sys.stderr)
            return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
