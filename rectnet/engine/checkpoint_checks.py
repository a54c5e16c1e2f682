"""Whether a loaded checkpoint has the structure a resume needs: every entry's type and shape, each rank's RNG
states, and one number of ranks across the per-rank entries (`rectnet.engine.checkpoint.load` calls
`structure_fault`).

A checkpoint that torch.load reads can still hold an entry of the wrong type (a damaged file, one written by
hand): a resume would then fail with a TypeError or AttributeError deep inside `load_state_dict` or
`state.set_rng_state`. Found here, the fault counts as damage, and `choose_resume` falls back to prev.pt.
"""

from __future__ import annotations

from typing import Any

import torch


def _is_int(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _python_rng(value: Any) -> bool:
    """random.getstate(): (version, 625 ints, None or the cached gaussian); lists after some round trips."""
    return (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and _is_int(value[0])
        and isinstance(value[1], (tuple, list))
        and all(_is_int(x) for x in value[1])
        and (value[2] is None or _is_number(value[2]))
    )


def _rng_fault(index: int, rng: Any) -> str | None:
    """The entry of one rank's RNG states that `state.set_rng_state` could not restore, or None."""
    name = f"rng[{index}]"
    if not isinstance(rng, dict):
        return f"{name} is {_shown(rng)}, not a dict of RNG states"
    missing = [k for k in ("python", "numpy", "torch", "cuda") if k not in rng]
    if missing:
        return f"{name} lacks {', '.join(missing)}"
    numpy = rng["numpy"]
    checks = {
        "python": _python_rng(rng["python"]),
        "numpy": isinstance(numpy, dict)
        and isinstance(numpy.get("key"), torch.Tensor)
        and _is_int(numpy.get("pos"))
        and _is_int(numpy.get("has_gauss"))
        and _is_number(numpy.get("cached_gaussian")),
        "torch": isinstance(rng["torch"], torch.Tensor) and rng["torch"].dtype == torch.uint8,
        "cuda": isinstance(rng["cuda"], torch.Tensor) or rng["cuda"] == [],  # a CPU rank saves an empty list
    }
    wrong = next((key for key, ok in checks.items() if not ok), None)
    return None if wrong is None else f"{name}.{wrong} is {_shown(rng[wrong])}, not a {wrong} RNG state"


def _tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in value.items())


def _optimizer_state(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("state"), dict)
        and all(isinstance(per, dict) for per in value["state"].values())
        and isinstance(value.get("param_groups"), list)
        and all(isinstance(group, dict) for group in value["param_groups"])
    )


def _counts(value: Any) -> bool:
    """Per rank, `Counts.as_tensor()`: loss sum, top-1, top-5, n and skipped."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() == 5 for t in value)
    )


def _dict_of(keys: type, values: Any) -> Any:
    return lambda v: isinstance(v, dict) and all(isinstance(k, keys) and values(x) for k, x in v.items())


def _list_of(items: Any) -> Any:
    return lambda v: isinstance(v, list) and all(items(x) for x in v)


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


def _anything(value: Any) -> bool:
    return True


# Every entry of a checkpoint: (what it must be, the check). Entries nested deeper are the
# business of whatever reads them (load_state_dict names what does not fit), except the RNG states: `_rng_fault`.
STRUCTURE: dict[str, tuple[str, Any]] = {
    "model": ("a dict of tensors", _tensor_dict),
    "optimizer": (
        "an optimizer state_dict (a dict 'state' of dicts, a list 'param_groups' of dicts)",
        _optimizer_state,
    ),
    "schedule": ("a dict", _dict_of(str, _anything)),
    "scaler": ("None or a dict", _optional(_dict_of(str, _anything))),
    "epoch": ("an int >= 0", _is_int),
    "step": ("an int >= 0", _is_int),
    "position": ("an int >= 0", _is_int),
    "partial": ("a list of per-rank count tensors", _counts),
    "best_top1_err": ("a number", _is_number),
    "best_epoch": ("an int >= 0", _is_int),
    "stopped_at": ("an int >= 0", _is_int),
    "records": ("a dict of numbers", _dict_of(str, _is_number)),
    "resumes": ("a list of dicts", _list_of(lambda r: isinstance(r, dict))),
    "rng": ("a list of per-rank dicts", lambda v: isinstance(v, list) and bool(v)),
    "world_size": ("an int >= 1", lambda v: _is_int(v, 1)),
    "config": ("a dict", _dict_of(str, _anything)),
    "fingerprint": ("a dict", _dict_of(str, _anything)),
    "data": ("None or a dict", _optional(_dict_of(str, _anything))),
}
# Entries added after CHECKPOINT_FORMAT 3's first checkpoints: checked where present (an older checkpoint, which
# lacks them, still resumes: State.from_dict says what stands in for them)
LATER_ENTRIES: dict[str, tuple[str, Any]] = {
    "attempts": ("a list of dicts", _list_of(lambda r: isinstance(r, dict))),
}


def structure_fault(state: dict) -> str | None:
    """What in a checkpoint has the wrong type or shape, or None.

    Every top-level entry's type (`STRUCTURE`), the RNG states of every rank, and that the per-rank entries
    agree on the number of ranks: without this a damaged entry fails the resume with a TypeError or
    AttributeError instead of counting as damage, and `choose_resume` would not fall back to prev.pt.
    """
    for key, (what, ok) in STRUCTURE.items():
        if key not in state:
            return f"{key} is missing"
        if not ok(state[key]):
            return f"{key} is {_shown(state[key])}, not {what}"
    for key, (what, ok) in LATER_ENTRIES.items():
        if key in state and not ok(state[key]):
            return f"{key} is {_shown(state[key])}, not {what}"
    for index, rng in enumerate(state["rng"]):
        fault = _rng_fault(index, rng)
        if fault:
            return fault
    ranks = {"rng": len(state["rng"]), "partial": len(state["partial"]), "world_size": state["world_size"]}
    if len(set(ranks.values())) > 1:
        listed = ", ".join(f"{key}: {n}" for key, n in ranks.items())
        return f"its per-rank entries disagree on the number of ranks ({listed})"
    return None
