"""Cold degradations (Bansal et al. 2022): deterministic (or seeded) image transforms with integer
severities t in {0..T}, one module per family, all behind ``Degradation``'s interface
(``base.py``). ``make_degradation("blur:T=20:sigma=7")`` builds one from a short spec;
``DEGRADATIONS`` maps each name to its class.

| name        | D(x0, T) is                                  | paper default T |
|-------------|-----------------------------------------------|-----------------|
| blur        | ~ the per-channel mean (circular padding)     | 20 (MNIST)      |
| mask        | a wide hole filled with 0 / a flat colour     | 50 (MNIST)      |
| pixelate    | 2^T x 2^T blocks of their means               | 3 (32 x 32)     |
| desaturate  | gray (all channels equal)                     | 50 (code)       |
| snow        | hazed, heavily snowed image                   | 50 (code)       |
| fade        | another dataset's image                       | 200             |
| gaussian    | N(0, I) noise (DDPM at level t / T)           | 200             |
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any

from .base import Degradation, State
from .blur import Blur
from .desaturate import Desaturate
from .fade import Fade
from .mask import Mask
from .noise import GaussianNoise
from .pixelate import Pixelate
from .snow import Snow

DEGRADATIONS: dict[str, type[Degradation]] = {
    cls.name: cls for cls in (Blur, Mask, Pixelate, Desaturate, Snow, Fade, GaussianNoise)
}
#: Spec keys accepted as short names of constructor arguments.
ALIASES = {"T": "num_steps", "steps": "num_steps", "k": "kernel_size", "size": "kernel_size"}
#: Spec keys kept for one release with a FutureWarning: "steps" also meant optimiser and sampler steps.
DEPRECATED_KEYS = {"steps": "T"}


def _coerce(value: str, default: Any) -> Any:
    """A spec string as the type of the argument's default: bool, a number, None or a string."""
    low = value.strip().lower()
    if isinstance(default, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if low in ("none", "null"):
        return None
    convs = (int, float) if not isinstance(default, float) else (float,)
    for conv in convs:  # numbers where they parse; anything else is left to the constructor
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def degradation_from_config(cfg: dict) -> Degradation:
    """Rebuild a degradation from ``degradation.config()``."""
    kind = cfg.get("type")
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation type {kind!r}; choose one of {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[kind].from_config(cfg)


def make_degradation(spec: str | dict | Degradation) -> Degradation:
    """A degradation from a spec: a name ("blur"), a name with settings ("blur:T=20:sigma=7",
    "mask:center=middle:fill=random", "pixelate:3" — a bare number is T), a config dict, or a
    ``Degradation`` (returned as is)."""
    if isinstance(spec, Degradation):
        return spec
    if isinstance(spec, dict):
        return degradation_from_config(spec)
    name, *parts = [p.strip() for p in str(spec).split(":")]
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose one of {sorted(DEGRADATIONS)} "
                         "(e.g. 'blur', 'blur:T=20:sigma=7')")
    cls = DEGRADATIONS[name]
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if k not in ("self", "pool")}
    kwargs: dict[str, Any] = {}
    for part in parts:
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            key, value = "num_steps", part
        key = key.strip()
        if key in DEPRECATED_KEYS:
            warnings.warn(f"{name}:{key}= is deprecated; write {name}:{DEPRECATED_KEYS[key]}= (the number of "
                          "severities; removed in the next release)", FutureWarning, stacklevel=2)
        key = ALIASES.get(key, key)
        if key not in params:
            raise ValueError(f"{name} has no setting {key!r}; its settings are {', '.join(params)}")
        try:
            kwargs[key] = _coerce(value, params[key].default)
        except ValueError as err:
            raise ValueError(f"{name}: cannot read {key}={value!r}: {err}") from None
    return cls(**kwargs)


def is_cold(spec) -> bool:
    """Whether ``spec`` (a spec string such as "blur:T=20", a config dict or a process object)
    names a cold degradation rather than a Gaussian process."""
    if isinstance(spec, Degradation):
        return True
    if isinstance(spec, dict):
        return spec.get("type") in DEGRADATIONS
    if isinstance(spec, str):
        return spec.split(":", 1)[0].strip() in DEGRADATIONS
    return False


__all__ = ["Degradation", "State", "is_cold", "Blur", "Mask", "Pixelate",
           "Desaturate", "Snow", "Fade", "GaussianNoise", "DEGRADATIONS", "make_degradation",
           "degradation_from_config"]
