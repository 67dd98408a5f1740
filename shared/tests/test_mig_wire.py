"""hami_shared.mig: knownMigGeometries parsing and the vgpu-mig-allocations codec against HAMi's literal forms."""

from __future__ import annotations

import pytest
import yaml
from hami_shared.errors import MalformedInputError
from hami_shared.mig import (
    DEFAULT_KNOWN_GEOMETRIES,
    GeometryEntry,
    MigAllocation,
    MigConfigError,
    decode_mig_allocations,
    default_known_geometries_doc,
    encode_mig_allocations,
    geometries_for_type,
    parse_known_geometries,
    parse_known_geometries_text,
)

# From the HAMi v2.5 release article (seeds/004), A100-40GB entry.
SEED_A100_40GB = """
- models: [ "A100-SXM4-40GB", "A100-40GB-PCIe", "A100-PCIE-40GB", "A100-SXM4-40GB" ]
  allowedGeometries:
    -
      - name: 1g.5gb
        memory: 5120
        count: 7
    -
      - name: 2g.10gb
        memory: 10240
        count: 3
      - name: 1g.5gb
        memory: 5120
        count: 1
    -
      - name: 3g.20gb
        memory: 20480
        count: 2
    -
      - name: 7g.40gb
        memory: 40960
        count: 1
"""

# HAMi's own documentation of the annotation (after the device plugin completed it).
HAMI_REALIZED = (
    '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-4c395b7a-a7e6-d90f-1ced-d96e8dd68288","profile":"1g.24gb",'
    '"placement":{"start":9,"size":3},"migUUID":"MIG-a5fa6120-f6fa-51b6-9820-a42112640629","gpuInstanceID":6,'
    '"computeInstanceID":0}]'
)


def test_the_seed_geometries_parse() -> None:
    [model] = parse_known_geometries(yaml.safe_load(SEED_A100_40GB))
    assert model.models[0] == "A100-SXM4-40GB"
    assert model.geometries[1] == (GeometryEntry("2g.10gb", 10240, 3), GeometryEntry("1g.5gb", 5120, 1))
    assert len(model.geometries) == 4


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (
            [{"models": ["A30"], "allowedGeometries": [[{"name": "1g.6gb", "memory": "6G", "count": 4}]]}],
            "knownMigGeometries[0].allowedGeometries[0][0].memory",
        ),
        ([{"models": [], "allowedGeometries": []}], "knownMigGeometries[0].models"),
        ([{"models": ["A30"], "allowedGeometry": []}], "knownMigGeometries[0]: unknown keys"),
        ([{"models": ["A30"], "allowedGeometries": [[{"name": "a", "memory": 1, "count": 9}]]}], ".count"),
        ({"models": ["A30"]}, "knownMigGeometries: expected a list"),
    ],
)
def test_a_wrong_geometry_names_its_path(doc: object, path: str) -> None:
    with pytest.raises(MigConfigError, match=path.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_known_geometries(doc)


def test_hamis_realized_annotation_round_trips_byte_for_byte() -> None:
    [allocation] = decode_mig_allocations(HAMI_REALIZED)
    assert allocation.realized
    assert (allocation.start, allocation.size, allocation.gpu_instance_id) == (9, 3, 6)
    assert encode_mig_allocations([allocation]) == HAMI_REALIZED


def test_a_reservation_writes_start_zero_and_no_runtime_fields() -> None:
    reserved = MigAllocation(container_index=0, device_index=1, gpu_uuid="GPU-a", profile="7g.40gb", start=0, size=8)
    text = encode_mig_allocations([reserved])
    assert (
        text == '[{"containerIndex":0,"deviceIndex":1,"gpuUUID":"GPU-a","profile":"7g.40gb",'
        '"placement":{"start":0,"size":8}}]'
    )
    assert decode_mig_allocations(text) == (reserved,)
    assert (
        decode_mig_allocations(encode_mig_allocations([reserved.with_identity("MIG-b", 1, 0)]))[0].mig_uuid == "MIG-b"
    )


@pytest.mark.parametrize(
    "value",
    [
        "{}",
        "[1]",
        '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"p","placement":{"start":0,"size":0}}]',
        '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"p","placement":{"start":0,"size":1},"migUUID":"MIG-x"}]',
        '[{"containerIndex":-1,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"p","placement":{"start":0,"size":1}}]',
        '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-a","profile":"p","placement":{"start":0,"size":1}},'
        '{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-b","profile":"p","placement":{"start":1,"size":1}}]',
        "[" * 100_000,
        "x" * 70_000,
    ],
)
def test_malformed_allocations_are_refused(value: str) -> None:
    with pytest.raises(MalformedInputError):
        decode_mig_allocations(value)


# --- defaults, model matching, text form --------------------------------------------------------------


def test_defaults_cover_the_models_of_the_issue_and_round_trip_through_the_parser() -> None:
    assert parse_known_geometries(default_known_geometries_doc()) == DEFAULT_KNOWN_GEOMETRIES
    whole = {
        "NVIDIA A30": "4g.24gb",
        "NVIDIA A100-SXM4-40GB": "7g.40gb",
        "NVIDIA A100-PCIE-40GB": "7g.40gb",
        "NVIDIA A100-SXM4-80GB": "7g.80gb",
        "NVIDIA A100 80GB PCIe": "7g.80gb",
        "NVIDIA H100 80GB HBM3": "7g.80gb",
        "NVIDIA H100 PCIe": "7g.80gb",
        "NVIDIA H100 NVL": "7g.94gb",
        "NVIDIA H100 96GB HBM3": "7g.96gb",
        "NVIDIA H200": "7g.141gb",
        "NVIDIA H200 NVL": "7g.141gb",
    }
    for device_type, profile in whole.items():
        geometries = geometries_for_type(device_type, DEFAULT_KNOWN_GEOMETRIES)
        largest = max((g for g in geometries), key=lambda g: g[0].memory_mib, default=None)
        assert (largest[0].name if largest else "") == profile, device_type
    for entry in DEFAULT_KNOWN_GEOMETRIES:
        for geometry in entry.geometries:
            # 7 compute slices per card: the "<n>g" of every profile times its count.
            assert sum(int(e.name.split("g.")[0]) * e.count for e in geometry) <= 7, geometry


def test_model_matching_takes_the_first_entry_with_a_substring_model() -> None:
    known = parse_known_geometries(
        [
            {"models": ["A100-SXM4"], "allowedGeometries": [[{"name": "a", "memory": 1, "count": 1}]]},
            {"models": ["A100"], "allowedGeometries": [[{"name": "b", "memory": 1, "count": 1}]]},
        ]
    )
    assert geometries_for_type("NVIDIA A100-SXM4-40GB", known)[0][0].name == "a"
    assert geometries_for_type("NVIDIA A100-PCIE-40GB", known)[0][0].name == "b"
    assert geometries_for_type("NVIDIA a100", known) == ()
    assert geometries_for_type("NVIDIA-Tesla T4", known) == ()


def test_text_form_reads_yaml_json_and_hamis_section_and_refuses_with_the_path() -> None:
    listed = '[{"models": ["A30"], "allowedGeometries": [[{"name": "1g.6gb", "memory": 6144, "count": 4}]]}]'
    section = (
        "knownMigGeometries:\n- models: [A30]\n  allowedGeometries:\n  - - {name: 1g.6gb, memory: 6144, count: 4}\n"
    )
    assert parse_known_geometries_text(listed) == parse_known_geometries_text(section)
    with pytest.raises(MigConfigError, match="not YAML"):
        parse_known_geometries_text("[{")
    with pytest.raises(MigConfigError, match="more than"):
        parse_known_geometries_text(" " * (300 * 1024))
    with pytest.raises(MigConfigError, match=r"knownMigGeometries\[0\]\.models"):
        parse_known_geometries_text('[{"models": [], "allowedGeometries": []}]')
