from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="CreateToken")


@_attrs_define
class CreateToken:
    """
    Attributes:
        project (str): A project name, or `*` for every project.
        role (str):
        subject (str):
        ttl_days (int | Unset):
    """

    project: str
    role: str
    subject: str
    ttl_days: int | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        project = self.project

        role = self.role

        subject = self.subject

        ttl_days = self.ttl_days

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "project": project,
                "role": role,
                "subject": subject,
            }
        )
        if ttl_days is not UNSET:
            field_dict["ttl_days"] = ttl_days

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        project = d.pop("project")

        role = d.pop("role")

        subject = d.pop("subject")

        ttl_days = d.pop("ttl_days", UNSET)

        create_token = cls(
            project=project,
            role=role,
            subject=subject,
            ttl_days=ttl_days,
        )

        return create_token
