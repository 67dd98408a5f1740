"""Version strings become file-name suffixes: only safe ones pass, with a message saying why not."""

from __future__ import annotations

import pytest
from hami_lib_installer.core.errors import InvalidVersionError
from hami_lib_installer.core.layout import parse_versioned_name, versioned_name
from hami_lib_installer.core.version import (
    MAX_VERSION_LENGTH,
    parse_version_file,
    validate_version,
    version_from_digests,
)
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("version", ["2.5.0", "v2.8.0-rc.1", "1.0+build.7", "sha-0123456789ab", "a", "2_5"])
def test_safe_versions_pass(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("", "empty"),
        ("../x", "not allowed"),
        ("a/b", "'/'"),
        ("..", "'..'"),
        ("1..2", "'..'"),
        (".hidden", "start with a letter or digit"),
        ("-rf", "start with a letter or digit"),
        ("x" * (MAX_VERSION_LENGTH + 1), "at most 64"),
        ("1.0\x00", "'\\x00'"),
        ("1.0\n", "'\\n'"),
        ("1.0\x1b[31m", "'\\x1b'"),
        ("2.5 0", "' '"),
        ("versión", "'ó'"),
        ("a\\b", "'\\\\'"),
    ],
)
def test_unsafe_versions_are_refused_with_the_reason(version: str, why: str) -> None:
    with pytest.raises(InvalidVersionError) as info:
        validate_version(version)
    assert why in str(info.value)
    assert "e.g. 2.5.0" in str(info.value)


@given(st.text(max_size=80))
def test_any_accepted_version_is_a_plain_file_name_suffix(text: str) -> None:
    try:
        version = validate_version(text)
    except InvalidVersionError:
        return
    name = versioned_name("libvgpu.so", version)
    assert "/" not in name
    assert "\x00" not in name
    assert not version.startswith((".", "-"))
    assert ".." not in version
    assert version.isprintable()
    assert len(version) <= MAX_VERSION_LENGTH
    assert parse_versioned_name(name) == ("libvgpu.so", version)


def test_content_version_is_stable_and_changes_with_content() -> None:
    a = version_from_digests(["aa", "bb"])
    assert a == version_from_digests(["aa", "bb"])
    assert a != version_from_digests(["aa", "bc"])
    assert a.startswith("sha-")
    assert len(a) == 16


def test_version_file_takes_the_first_line() -> None:
    assert parse_version_file("\n 2.8.1 \nignored\n") == "2.8.1"
    with pytest.raises(InvalidVersionError, match="empty"):
        parse_version_file("\n  \n")
    with pytest.raises(InvalidVersionError):
        parse_version_file("../../etc\n")


def test_versioned_names_of_other_files_are_not_ours() -> None:
    assert parse_versioned_name("libvgpu_vk.so.2.5.0") == ("libvgpu_vk.so", "2.5.0")
    for name in ("libvgpu.so", "libvgpu.so.", "libvgpu.so.bak~", "libvgpu.so..x", "libfoo.so.1", "ld.so.preload"):
        assert parse_versioned_name(name) is None
