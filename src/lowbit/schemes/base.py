"""The scheme interface and registry: one module per scheme, found by name."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..errors import ConfigError

SCHEMES: dict[str, type["Scheme"]] = {}


class Scheme:
    """How one scheme quantizes a layer.

    ``prepare`` turns a float layer into a calibration / fake-quant layer (sharing
    its parameters); ``convert`` turns that, once calibrated, into the deployed layer.
    Options are validated on construction against ``defaults``.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    defaults: ClassVar[dict]
    needs_calibration: ClassVar[bool] = True
    # The calibrator (and its options) used when the caller names none.
    default_calibrator: ClassVar[tuple[str, dict]] = ("entropy", {})
    # The weight algorithms lowbit.quantize(..., algorithm=) accepts (lowbit.algorithms.gptq).
    algorithms: ClassVar[tuple[str, ...]] = ("rtn",)

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ConfigError(f"scheme {self.name!r} has no option {', '.join(unknown)}; "
                              f"valid options: {', '.join(self.defaults) or 'none'}")
        self.options = {**self.defaults, **options}
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for invalid option values."""

    def supports(self, module: nn.Module) -> bool:
        """Whether this scheme quantizes ``module`` (a Linear, Conv1d or Conv2d)."""
        return True

    def layer_policy(self, names: list[str]) -> dict[str, dict | None]:
        """Option changes for particular layers, given every quantizable layer's name in model
        order (e.g. "keep the first and last layer at 8 bits"); None keeps a layer in float.
        Users' overrides win over it."""
        return {}

    def prepare(self, module: nn.Module, name: str, calibrator: str, calibrator_options: dict) -> nn.Module:
        raise NotImplementedError

    def convert(self, prepared: nn.Module, name: str) -> nn.Module:
        raise NotImplementedError


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    SCHEMES[cls.name] = cls
    return cls


def get_scheme(name: str, **options) -> Scheme:
    """An instance of the scheme called ``name`` with ``options``."""
    if not isinstance(name, str) or name not in SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}: expected one of {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name](**options)
