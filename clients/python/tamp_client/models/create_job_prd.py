from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.job_constraints import JobConstraints


T = TypeVar("T", bound="CreateJobPrd")


@_attrs_define
class CreateJobPrd:
    """The PRD's job request.

    Attributes:
        model_version_id (str): `<project>.<model>/<version>` (the `id` of `GET /models/{id}/versions/{version}`).
        constraints (JobConstraints | Unset): The job's constraints (each replaces the policy's where given).
        policy_id (None | str | Unset): A stored policy `<project>.<name>`; without it, the version's uploaded
            recipe.yaml.
        target_runtimes (list[str] | None | Unset): Replaces the policy's `targets` (onnxruntime, tflite, tensorrt,
            openvino).
    """

    model_version_id: str
    constraints: JobConstraints | Unset = UNSET
    policy_id: None | str | Unset = UNSET
    target_runtimes: list[str] | None | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        model_version_id = self.model_version_id

        constraints: dict[str, Any] | Unset = UNSET
        if not isinstance(self.constraints, Unset):
            constraints = self.constraints.to_dict()

        policy_id: None | str | Unset
        if isinstance(self.policy_id, Unset):
            policy_id = UNSET
        else:
            policy_id = self.policy_id

        target_runtimes: list[str] | None | Unset
        if isinstance(self.target_runtimes, Unset):
            target_runtimes = UNSET
        elif isinstance(self.target_runtimes, list):
            target_runtimes = self.target_runtimes

        else:
            target_runtimes = self.target_runtimes

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "model_version_id": model_version_id,
            }
        )
        if constraints is not UNSET:
            field_dict["constraints"] = constraints
        if policy_id is not UNSET:
            field_dict["policy_id"] = policy_id
        if target_runtimes is not UNSET:
            field_dict["target_runtimes"] = target_runtimes

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.job_constraints import JobConstraints

        d = dict(src_dict)
        model_version_id = d.pop("model_version_id")

        _constraints = d.pop("constraints", UNSET)
        constraints: JobConstraints | Unset
        if isinstance(_constraints, Unset):
            constraints = UNSET
        else:
            constraints = JobConstraints.from_dict(_constraints)

        def _parse_policy_id(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        policy_id = _parse_policy_id(d.pop("policy_id", UNSET))

        def _parse_target_runtimes(data: object) -> list[str] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                target_runtimes_type_0 = cast(list[str], data)

                return target_runtimes_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[str] | None | Unset, data)

        target_runtimes = _parse_target_runtimes(d.pop("target_runtimes", UNSET))

        create_job_prd = cls(
            model_version_id=model_version_id,
            constraints=constraints,
            policy_id=policy_id,
            target_runtimes=target_runtimes,
        )

        return create_job_prd
