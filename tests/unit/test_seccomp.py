"""The instance seccomp filter as a program: run through a small classic-BPF interpreter per architecture."""

from __future__ import annotations

import struct

import pytest

from appliance.instances import sandbox

EPERM, ENOSYS = 1, 38
ALLOW = "allow"


def run(prog, nr: int, arch: int, args=(0,) * 6):
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:                       # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):      # jeq / jge / jset
            hit = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:                     # ret k
            if k == sandbox.SECCOMP_RET_ALLOW:
                return ALLOW
            assert k & 0xFFFF0000 == sandbox.SECCOMP_RET_ERRNO
            return k & 0xFFFF
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_denied_calls_get_eperm_and_the_rest_pass(machine):
    prog = sandbox.seccomp_program(machine)
    assert len(prog) < 256
    table, arch = sandbox._SYSCALLS[machine], sandbox.AUDIT_ARCH[machine]
    for name in sandbox.SECCOMP_DENY:
        if name in table:
            assert run(prog, table[name], arch) == EPERM, name
    denied = {table[n] for n in sandbox.SECCOMP_DENY if n in table} | {table["clone"], table["clone3"],
                                                                       table["personality"]}
    for nr in range(0, 470):
        if nr not in denied:
            assert run(prog, nr, arch) == ALLOW, nr
    assert run(prog, table["clone3"], arch) == ENOSYS


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_clone_is_refused_only_with_a_namespace_flag(machine):
    prog = sandbox.seccomp_program(machine)
    clone, arch = sandbox._SYSCALLS[machine]["clone"], sandbox.AUDIT_ARCH[machine]
    thread = 0x3D0F00                     # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|...
    assert run(prog, clone, arch, (17,)) == ALLOW              # fork: SIGCHLD
    assert run(prog, clone, arch, (thread,)) == ALLOW
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert run(prog, clone, arch, (flag | 17,)) == EPERM, hex(flag)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_personality_only_keeps_the_default_or_asks(machine):
    prog = sandbox.seccomp_program(machine)
    nr, arch = sandbox._SYSCALLS[machine]["personality"], sandbox.AUDIT_ARCH[machine]
    assert run(prog, nr, arch, (0,)) == ALLOW
    assert run(prog, nr, arch, (0xFFFFFFFF,)) == ALLOW
    assert run(prog, nr, arch, (0x0040000,)) == EPERM        # ADDR_NO_RANDOMIZE
    assert run(prog, nr, arch, (0x0400000,)) == EPERM        # READ_IMPLIES_EXEC


def test_other_abis_look_absent():
    x86 = sandbox.seccomp_program("x86_64")
    arch = sandbox.AUDIT_ARCH["x86_64"]
    assert run(x86, 39 | 0x40000000, arch) == ENOSYS          # x32 getpid
    assert run(x86, 26, 0x40000003) == ENOSYS                 # i386 ptrace through int 0x80
    arm = sandbox.seccomp_program("aarch64")
    assert run(arm, 26, 0x40000028) == ENOSYS                 # AArch32


def test_an_unknown_architecture_gets_no_filter_and_a_reason(monkeypatch):
    monkeypatch.setattr(sandbox.platform, "machine", lambda: "riscv64")
    assert "riscv64" in sandbox._seccomp_unavailable()
    monkeypatch.setenv("FAAS_SANDBOX_SECCOMP", "0")
    assert "FAAS_SANDBOX_SECCOMP=0" in sandbox._seccomp_unavailable()
