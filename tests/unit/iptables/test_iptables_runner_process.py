"""The runner's subprocess boundary, with stand-in tools (no root needed): streaming, errors, context."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dynamic_asgs.errors import IptablesError, RestoreError
from dynamic_asgs.iptables import runner as runner_module
from dynamic_asgs.iptables.runner import IptablesRunner, commands_for, error_context
from support.commands import shim as tool


def test_commands_per_backend() -> None:
    assert commands_for(4) == ("iptables-restore", "iptables-save")
    assert commands_for(6, "nft") == ("ip6tables-nft-restore", "ip6tables-nft-save")
    assert commands_for(4, "legacy") == ("iptables-legacy-restore", "iptables-legacy-save")
    with pytest.raises(ValueError, match="unknown iptables backend"):
        commands_for(4, "ebpf")


def test_streams_the_payload_with_wait_and_noflush(tmp_path: Path) -> None:
    got = tmp_path / "got"
    restore = tool(tmp_path, "restore", f'echo "$@" > {got}.args\ncat > {got}\n')
    r = IptablesRunner(version=4, restore_cmd=restore, save_cmd="unused", lock_file=tmp_path / "lock",
                       lock_timeout=7.2)
    lines = ["*filter", *(f"-A asg-x -j ACCEPT #{i}" for i in range(10_000)), "COMMIT"]
    stats = r.restore(iter(lines))
    assert stats.lines == 10_002 and got.read_text().splitlines() == lines
    assert Path(f"{got}.args").read_text().split() == ["-w", "8", "--noflush"]


def test_the_tools_pipe_holds_several_chunks_so_generation_never_waits_for_parsing(tmp_path: Path) -> None:
    got = tmp_path / "pipe-size"
    probe = f"import fcntl, sys; open({str(got)!r}, 'w').write(str(fcntl.fcntl(0, 1032))); sys.stdin.read()"
    restore = tool(tmp_path, "restore", f'exec {sys.executable} -c "{probe}"\n')  # 1032: F_GETPIPE_SZ
    r = IptablesRunner(version=4, restore_cmd=restore, save_cmd="unused", lock_file=tmp_path / "lock")
    r.restore(["*filter", "COMMIT"])
    assert int(got.read_text()) >= 1 << 20


def test_a_pipe_that_cannot_be_widened_still_carries_the_whole_payload(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> int:
        raise PermissionError(1, "Operation not permitted")  # an unprivileged agent above pipe-max-size

    monkeypatch.setattr(runner_module.fcntl, "fcntl", refuse)
    got = tmp_path / "got"
    restore = tool(tmp_path, "restore", f"cat > {got}\n")
    r = IptablesRunner(version=4, restore_cmd=restore, save_cmd="unused", lock_file=tmp_path / "lock")
    lines = ["*filter", *(f"-A asg-x -j ACCEPT #{i}" for i in range(5_000)), "COMMIT"]
    assert r.restore(lines).lines == 5_002 and got.read_text().splitlines() == lines


@pytest.mark.parametrize("stderr", ["iptables-restore: line 3 failed\n",
                                    "iptables-restore v1.8.9 (legacy): Couldn't load match `x'\n\n"
                                    "Error occurred at line: 3\nTry `iptables-restore -h' for more information.\n"])
def test_a_refusal_names_the_line_and_quotes_its_neighbours(tmp_path: Path, stderr: str) -> None:
    (tmp_path / "stderr").write_text(stderr)
    restore = tool(tmp_path, "restore", f"cat > /dev/null\ncat {tmp_path / 'stderr'} >&2\nexit 2\n")
    r = IptablesRunner(version=4, restore_cmd=restore, save_cmd="unused", lock_file=tmp_path / "lock")
    payload = ["*filter", ":a - [0:0]", "-A a -m x", "-A a -j DROP", "COMMIT", "# end"]
    with pytest.raises(RestoreError) as err:
        r.restore(payload)
    assert err.value.line == 3 and "at line 3" in str(err.value) and "Try `" not in str(err.value)
    assert err.value.context.splitlines() == ["      1: *filter", "      2: :a - [0:0]", ">     3: -A a -m x",
                                              "      4: -A a -j DROP", "      5: COMMIT"]


def test_a_tool_exiting_early_is_a_refusal_without_a_line(tmp_path: Path) -> None:
    restore = tool(tmp_path, "restore", "echo 'unable to initialize table' >&2\nexit 1\n")
    r = IptablesRunner(version=6, restore_cmd=restore, save_cmd="unused", lock_file=tmp_path / "lock")
    with pytest.raises(RestoreError) as err:
        r.restore(["*filter"] + ["-A a -j DROP"] * 100_000)
    assert err.value.line is None and "unable to initialize table" in str(err.value)


def test_save_is_parsed_and_failures_are_errors(tmp_path: Path) -> None:
    save = tool(tmp_path, "save", 'test "$1 $2" = "-t filter" || exit 9\n'
                "printf '*filter\\n:INPUT ACCEPT [0:0]\\n:asg-a - [0:0]\\n-A asg-a -j ACCEPT\\nCOMMIT\\n'\n")
    r = IptablesRunner(version=4, restore_cmd="unused", save_cmd=save, lock_file=tmp_path / "lock")
    assert r.save().info["asg-a"].rules == 1
    broken = IptablesRunner(version=4, restore_cmd="unused", save_cmd=tool(tmp_path, "bad", "echo no >&2; exit 3\n"),
                            lock_file=tmp_path / "lock")
    with pytest.raises(IptablesError, match=r"failed \(exit 3\): no"):
        broken.save()


def test_a_hung_tool_is_killed(tmp_path: Path) -> None:
    r = IptablesRunner(version=4, restore_cmd="unused", save_cmd=tool(tmp_path, "hang", "exec sleep 30\n"),
                       lock_file=tmp_path / "lock", timeout=0.2)
    with pytest.raises(IptablesError, match="no answer within"):
        r.save()


def test_error_context_at_the_edges() -> None:
    assert error_context(["a", "b"], 1, radius=1) == ">     1: a\n      2: b"
