from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="ValidatePolicy")


@_attrs_define
class ValidatePolicy:
    """
    Attributes:
        yaml (str): The recipe YAML.
    """

    yaml: str

    def to_dict(self) -> dict[str, Any]:
        yaml = self.yaml

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "yaml": yaml,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        yaml = d.pop("yaml")

        validate_policy = cls(
            yaml=yaml,
        )

        return validate_policy
