"""The summary of an ``explain`` run: summary.csv, a journal appended as each image is done, and summary.json.

A row goes into summary.csv (written and flushed) once the image's overlay and map are on disk, so a run that
crashes or is stopped leaves every finished image in the summary. At the end both files are written whole,
one row per input in input order (summary.csv replaced atomically). ``--resume`` reads the journal back: the
last row of an image wins, and a row cut short by a crash is dropped. summary.json exists only once a run
has finished; a new run removes an old one first, so a summary.json present is never stale.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from .writing import atomic, refuse_inputs

CSV_NAME, JSON_NAME = "summary.csv", "summary.json"


@dataclass
class Outcome:
    """One input's row in the summary: ``status`` is ``explained``, ``skipped`` or ``failed`` (with its
    ``reason``). ``score`` is the predicted class's output value, a logit or a probability as
    :func:`~onnx_gradcam.files.score_kind` says (the summary names the column ``predicted_<kind>``).
    ``resumed``: the row was read back from an earlier run's summary (``--resume``); not a column."""

    image: str
    status: str = "explained"
    reason: Optional[str] = None
    predicted_class: Optional[int] = None
    score: Optional[float] = None
    explained_class: Optional[int] = None
    overlay: Optional[str] = None
    map: Optional[str] = None
    resumed: bool = False


COLUMNS = ("image", "status", "reason", "predicted_class", "score", "explained_class", "overlay", "map")
"""The :class:`Outcome` fields that are summary columns, in order (then ``layer`` and ``method``)."""
_NUMBERS = {"predicted_class": int, "explained_class": int, "score": float}


class Summary:
    """summary.csv and summary.json in ``out_dir`` for one run: explained at ``layers`` with ``method``, the
    score column named for ``kind``; ``inputs`` are never written over."""

    def __init__(self, out_dir: str, layers: Sequence[str], method: str, kind: str, inputs: Sequence[str]):
        self.csv_path, self.json_path = os.path.join(out_dir, CSV_NAME), os.path.join(out_dir, JSON_NAME)
        for path in (self.csv_path, self.json_path):
            refuse_inputs(path, inputs)
        self.layers, self.method, self.kind = list(layers), method, kind
        self.header = [self.column(c) for c in COLUMNS] + ["layer", "method"]
        self._journal = None

    def column(self, field_name: str) -> str:
        """The summary's name for an :class:`Outcome` field: ``score`` is named for what it holds."""
        return f"predicted_{self.kind}" if field_name == "score" else field_name

    def start(self, resume: bool) -> dict[str, Outcome]:
        """Open the journal; with ``resume`` keep an earlier run's rows and return them by image path (links
        resolved), else start it empty. An earlier summary of another layer, method or kind of score is
        refused: its outputs are not this run's."""
        previous = self._read() if resume and os.path.exists(self.csv_path) else None
        if os.path.exists(self.json_path):  # after the checks: a refused --resume leaves both files as they were
            os.remove(self.json_path)
        if previous is None:
            self._save(self.csv_path, self._table([]))
        self._journal = open(self.csv_path, "a", newline="")
        return previous or {}

    def append(self, outcome: Outcome) -> None:
        """Add ``outcome``'s row to summary.csv, flushed, so a crash right after keeps it."""
        self._journal.write(self._table([outcome], header=False))
        self._journal.flush()

    def finish(self, outcomes: Sequence[Outcome]) -> None:
        """summary.csv (one row per input, for spreadsheets) and summary.json (nested, for programs), whole."""
        self._journal.close()
        self._save(self.csv_path, self._table(outcomes))
        rows = [{self.column(c): getattr(o, c) for c in COLUMNS if getattr(o, c) is not None} for o in outcomes]
        summary = {"layers": self.layers, "method": self.method, "score": self.kind, "images": rows}
        self._save(self.json_path, json.dumps(summary, indent=2))

    def close(self) -> None:
        """Close the journal (a run that ends in an error); what it holds stays."""
        if self._journal is not None:
            self._journal.close()

    def _table(self, outcomes: Sequence[Outcome], header: bool = True) -> str:
        table = io.StringIO()
        writer = csv.writer(table)
        if header:
            writer.writerow(self.header)
        layer = "+".join(self.layers)
        for outcome in outcomes:
            writer.writerow(["" if getattr(outcome, c) is None else str(getattr(outcome, c)) for c in COLUMNS]
                            + [layer, self.method])
        return table.getvalue()

    def _read(self) -> dict[str, Outcome]:
        """The journal's rows (the last of each image), after dropping a last line a crash cut short."""
        with open(self.csv_path, "rb+") as handle:
            text = handle.read()
            if text and not text.endswith(b"\n"):
                handle.truncate(text.rfind(b"\n") + 1)
        with open(self.csv_path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header != self.header:
                raise ValueError(f"--resume: {self.csv_path!r} has the columns {', '.join(header or [])}, not "
                                 f"this run's ({', '.join(self.header)}): another model's summary; name another "
                                 "--out or leave out --resume")
            rows = [dict(zip(header, row)) for row in reader if len(row) == len(header)]
        layer = "+".join(self.layers)
        for row in rows:
            if (row["layer"], row["method"]) != (layer, self.method):
                raise ValueError(f"--resume: {self.csv_path!r} was explained at {row['layer']} with "
                                 f"{row['method']}, this run at {layer} with {self.method}; give the same --layer and "
                                 "--method, name another --out, or leave out --resume")
        return {os.path.realpath(row["image"]): self._outcome(row) for row in rows}

    def _outcome(self, row: dict) -> Outcome:
        values = {c: row[self.column(c)] or None for c in COLUMNS}
        values.update({c: kind(values[c]) for c, kind in _NUMBERS.items() if values[c] is not None})
        return Outcome(**values, resumed=True)

    @staticmethod
    def _save(path: str, text: str) -> None:
        with atomic(path) as staged, open(staged, "w", newline="") as handle:
            handle.write(text)
