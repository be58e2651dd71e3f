from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="JobConstraints")


@_attrs_define
class JobConstraints:
    """The job's constraints (each replaces the policy's where given).

    Attributes:
        max_latency_ms_p50 (float | None | Unset): The slowest P50 latency (ms, batch 1) a candidate may have.
        max_metric_drop_pct (float | None | Unset): The largest metric drop, in percent of the original, a candidate may
            have.
        min_compression_ratio (float | None | Unset): The smallest size ratio (original / compressed) a candidate must
            reach.
    """

    max_latency_ms_p50: float | None | Unset = UNSET
    max_metric_drop_pct: float | None | Unset = UNSET
    min_compression_ratio: float | None | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        max_latency_ms_p50: float | None | Unset
        if isinstance(self.max_latency_ms_p50, Unset):
            max_latency_ms_p50 = UNSET
        else:
            max_latency_ms_p50 = self.max_latency_ms_p50

        max_metric_drop_pct: float | None | Unset
        if isinstance(self.max_metric_drop_pct, Unset):
            max_metric_drop_pct = UNSET
        else:
            max_metric_drop_pct = self.max_metric_drop_pct

        min_compression_ratio: float | None | Unset
        if isinstance(self.min_compression_ratio, Unset):
            min_compression_ratio = UNSET
        else:
            min_compression_ratio = self.min_compression_ratio

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if max_latency_ms_p50 is not UNSET:
            field_dict["max_latency_ms_p50"] = max_latency_ms_p50
        if max_metric_drop_pct is not UNSET:
            field_dict["max_metric_drop_pct"] = max_metric_drop_pct
        if min_compression_ratio is not UNSET:
            field_dict["min_compression_ratio"] = min_compression_ratio

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)

        def _parse_max_latency_ms_p50(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        max_latency_ms_p50 = _parse_max_latency_ms_p50(d.pop("max_latency_ms_p50", UNSET))

        def _parse_max_metric_drop_pct(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        max_metric_drop_pct = _parse_max_metric_drop_pct(d.pop("max_metric_drop_pct", UNSET))

        def _parse_min_compression_ratio(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        min_compression_ratio = _parse_min_compression_ratio(d.pop("min_compression_ratio", UNSET))

        job_constraints = cls(
            max_latency_ms_p50=max_latency_ms_p50,
            max_metric_drop_pct=max_metric_drop_pct,
            min_compression_ratio=min_compression_ratio,
        )

        return job_constraints
