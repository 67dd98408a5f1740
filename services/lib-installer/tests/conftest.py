"""Session fixtures: test libraries and the reader program, built once with the system C compiler."""

from __future__ import annotations

import pathlib
import subprocess

import pytest
from installer_testkit import CC, TESTS, LibraryBuilder


@pytest.fixture(scope="session")
def libs(tmp_path_factory: pytest.TempPathFactory) -> LibraryBuilder:
    return LibraryBuilder(tmp_path_factory.mktemp("libs"))


@pytest.fixture(scope="session")
def reader(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("reader") / "reader"
    subprocess.run(
        [CC, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o", str(out), str(TESTS / "c" / "reader.c"), "-ldl"],
        check=True,
    )
    return out
