from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="NewPolicy")


@_attrs_define
class NewPolicy:
    """
    Attributes:
        name (str):
        project (str):
        yaml (str): The recipe YAML.
    """

    name: str
    project: str
    yaml: str

    def to_dict(self) -> dict[str, Any]:
        name = self.name

        project = self.project

        yaml = self.yaml

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "name": name,
                "project": project,
                "yaml": yaml,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        name = d.pop("name")

        project = d.pop("project")

        yaml = d.pop("yaml")

        new_policy = cls(
            name=name,
            project=project,
            yaml=yaml,
        )

        return new_policy
