from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="NewVersion")


@_attrs_define
class NewVersion:
    """
    Attributes:
        version (str):
        files (list[str] | Unset): Extra file names to get upload links for (model.onnx, calib.npz, eval.npz and
            recipe.yaml always come).
    """

    version: str
    files: list[str] | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        version = self.version

        files: list[str] | Unset = UNSET
        if not isinstance(self.files, Unset):
            files = self.files

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "version": version,
            }
        )
        if files is not UNSET:
            field_dict["files"] = files

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        version = d.pop("version")

        files = cast(list[str], d.pop("files", UNSET))

        new_version = cls(
            version=version,
            files=files,
        )

        return new_version
