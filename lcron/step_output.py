"""One output protocol for every step: lock, ownership, same inputs or other inputs, markers.

Every step that writes an output folder follows the same rule, and this module is the one
place that spells it, on top of :mod:`lcron.outputs` (markers, lock, ownership) and
:mod:`lcron.hashing` (the configuration hash):

1. **One writer.** :func:`step_output` holds the folder's lock for the whole step.
2. **Only our folders.** :meth:`StepOutput.claim` refuses a folder lcron did not make
   (:func:`lcron.outputs.refuse_foreign`) and a record file of another kind, even with
   ``--overwrite``: the folder given may be anything of the user's.
3. **Same inputs: the caller may skip; other inputs: refused unless ``--overwrite``.** The
   output's record file (``metrics.json``, ``serving.json``, ``run.json``, ...) stores the
   inputs and their hash; :meth:`StepOutput.claim` compares them with this run's and raises
   :class:`~lcron.errors.OutputExistsError` naming the differing fields, or returns a
   :class:`Claim` saying whether the existing output was made from the same inputs (an
   evaluation then returns it; a training run resumes it; a serving evaluation recomputes).
4. **Complete or visibly not.** :meth:`StepOutput.begin` / :meth:`StepOutput.finish`
   bracket the writing with the completion markers, once the step is past every check that
   can fail before anything is written, so a failed step leaves the previous output intact.

Usage, in a step::

    with step_output(out, command, kind=EVALUATION_KIND, ours=is_eval_folder,
                     folder_what="an lcron evaluation folder") as step:
        ...                                       # validate, compute the inputs and their hash
        claim = step.claim("metrics.json", inputs, inputs_hash, overwrite,
                           held="an evaluation with other inputs")
        if claim.same and not overwrite:
            return claim.previous                 # skip: nothing is written
        ...                                       # compute
        step.begin()
        ...                                       # write the files
        step.finish(files)
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from . import outputs
from .errors import OutputExistsError

__all__ = ["Claim", "StepOutput", "step_output", "field_diff", "read_record"]


@dataclass(frozen=True)
class Claim:
    """What :meth:`StepOutput.claim` found: the existing record (None: there is none, or it
    was not read because ``--overwrite`` replaces it anyway) and whether it was made from
    the same inputs."""

    previous: dict[str, Any] | None
    same: bool


def read_record(path: Path) -> dict[str, Any]:
    """A record file's document; {} when unreadable or not a JSON object: such a record
    matches no inputs, so it is refused unless overwriting ("unknown format")."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def field_diff(before: Mapping[str, Any], inputs: Mapping[str, Any]) -> str:
    """The inputs that differ, as ``key old -> new`` joined by "; " ("unknown format" when
    none does: a record without its inputs)."""
    diff = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in inputs.items() if before.get(k) != v]
    return "; ".join(diff) or "unknown format"


class StepOutput:
    """One step's hold on its output folder: made by :func:`step_output` under the folder's
    lock. Steps that have never locked their output (report and comparison pages, ingest,
    synthetic data) make one directly for the same checks, and stay unlocked."""

    def __init__(self, folder: Path, command: str, kind: str | None, ours: Callable[[Path], bool],
                 folder_what: str) -> None:
        self.folder, self.command, self.kind = folder, command, kind
        self._ours, self._folder_what = ours, folder_what

    def claim(self, record: str, inputs: Mapping[str, Any], inputs_hash: str | None, overwrite: bool, *,
              held: str = "an output of other inputs",
              where: Path | None = None, hash_field: str = "inputs_hash", record_noun: str | None = None,
              record_kind_ok: Callable[[Any], bool] | None = None, read_always: bool = True,
              describe: Callable[[dict[str, Any]], str] | None = None,
              read: Callable[[Path], dict[str, Any]] = read_record,
              same: Callable[[dict[str, Any]], bool] | None = None,
              refusal: Callable[[dict[str, Any]], str] | None = None, missing_record_ok: bool = True) -> Claim:
        """Check the folder against this run's ``inputs`` before anything is written.

        ``record`` is the file (inside the folder) that stores the inputs; the existing
        record is "the same" when its ``hash_field`` (``inputs_hash``; a run's ``config_hash``)
        equals ``inputs_hash`` or, with ``inputs_hash`` None, when its ``inputs`` equal
        ``inputs`` as JSON. Other inputs raise ``OutputExistsError("<where> holds <held>
        (<describe(old)>); choose another --out or pass --overwrite")`` unless ``overwrite``;
        ``where`` defaults to the folder, ``describe`` to :func:`field_diff` of the recorded
        inputs. A folder that is not the step's (``ours``) is refused first, even with
        ``overwrite`` (:func:`lcron.outputs.refuse_foreign`).

        ``record_noun`` with ``record_kind_ok``: a record whose JSON ``kind`` fails the
        check is not ours and is refused even with ``overwrite``. ``read_always`` False:
        with ``overwrite`` the old record is not read at all (the step replaces it unseen).
        ``read`` reads the record (default :func:`read_record`; a step whose unreadable record
        is an error of its own passes its reader). ``same(old)`` replaces the hash comparison
        where more than the hash names an output (a shard set: also its vocabulary counts);
        ``refusal(old)`` replaces the whole message where the step's own wording is kept.
        ``missing_record_ok`` False: a non-empty folder without the record holds other inputs
        (its record reads as {}), for a step whose record is its completion marker (ingest).
        """
        # ``ours`` is asked only of a folder (refuse_foreign passes a missing one, refuses a file).
        outputs.refuse_foreign(self.folder, self.folder.is_dir() and self._ours(self.folder), self._folder_what)
        path = self.folder / record
        if record_noun is not None and os.path.lexists(path) and not (record_kind_ok or bool)(
                outputs.json_kind(path)):
            raise OutputExistsError(f"{path} exists and is not an lcron {record_noun}; it is left untouched, even "
                                    "with --overwrite: choose another --out")
        if overwrite and not read_always:
            return Claim(None, False)
        if path.exists():
            old = read(path)
        elif missing_record_ok or not (self.folder.is_dir() and any(self.folder.iterdir())):
            return Claim(None, False)
        else:
            old = {}
        if same is not None:
            is_same = same(old)
        elif inputs_hash is not None:
            is_same = old.get(hash_field) == inputs_hash
        else:
            is_same = old.get("inputs") == json.loads(json.dumps(dict(inputs)))
        if not is_same and not overwrite:
            if refusal is not None:
                raise OutputExistsError(refusal(old))
            text = describe(old) if describe is not None else field_diff(old.get("inputs") or {}, inputs)
            raise OutputExistsError(f"{where or self.folder} holds {held} ({text}); choose another --out or pass "
                                    "--overwrite")
        return Claim(old, is_same)

    def begin(self, command: str | None = None) -> None:
        """Mark the folder "being written" (:func:`lcron.outputs.begin`): called once every
        check that can fail before writing has passed, so a failure before it leaves the
        previous output intact. ``command`` (default: the step's) is the one the pending
        record tells a reader to complete the output with."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.kind is not None:
            outputs.begin(self.folder, self.kind, command or self.command)

    def finish(self, files: Iterable[str | os.PathLike], info: dict[str, Any] | None = None) -> Path | None:
        """Write the completion marker listing ``files`` (:func:`lcron.outputs.finish`)."""
        if self.kind is None:
            return None
        return outputs.finish(self.folder, self.kind, files, info)


@contextlib.contextmanager
def step_output(folder: str | os.PathLike, command: str, *, kind: str | None = None,
                ours: Callable[[Path], bool] = lambda folder: False,
                folder_what: str = "an lcron output folder") -> Iterator[StepOutput]:
    """Hold the lock of output ``folder`` for the block and hand the step its
    :class:`StepOutput`. ``command`` is quoted in the lock and the pending record;
    ``kind`` names the completion markers (None: the step's record file is its own marker);
    ``ours(folder)`` says whether a non-empty folder is this step's kind of output
    (``folder_what`` names that kind in the refusal)."""
    folder = Path(folder)
    with outputs.output_lock(folder, command):
        yield StepOutput(folder, command, kind, ours, folder_what)
