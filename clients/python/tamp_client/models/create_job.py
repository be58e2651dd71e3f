from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="CreateJob")


@_attrs_define
class CreateJob:
    """The earlier job request (still served).

    Attributes:
        model (str):
        project (str):
        version (str):
        policy (None | str | Unset): A stored policy (`<project>.<name>`) instead of the version's uploaded recipe.yaml.
    """

    model: str
    project: str
    version: str
    policy: None | str | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        model = self.model

        project = self.project

        version = self.version

        policy: None | str | Unset
        if isinstance(self.policy, Unset):
            policy = UNSET
        else:
            policy = self.policy

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "model": model,
                "project": project,
                "version": version,
            }
        )
        if policy is not UNSET:
            field_dict["policy"] = policy

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        model = d.pop("model")

        project = d.pop("project")

        version = d.pop("version")

        def _parse_policy(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        policy = _parse_policy(d.pop("policy", UNSET))

        create_job = cls(
            model=model,
            project=project,
            version=version,
            policy=policy,
        )

        return create_job
