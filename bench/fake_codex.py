#!/usr/bin/env -S python3 -S -E
"""A minimal fake `codex` for benchmarks (the Python twin of the `bench/fake_codex` sh script).

Behaves enough like `codex exec --json ... [-o FILE] [resume THREAD_ID] -` for phh: answers
`--version` and `exec [resume] --help`, reads the prompt from stdin, prints the JSONL events
`thread.started`, `turn.started`, one `item.completed` agent_message and `turn.completed`
(with FAKE_CODEX_STREAM="N,SECONDS", N command events SECONDS apart before the answer),
writes a valid Run Report to the `-o` file, leaves a rollout file under
`$CODEX_HOME/sessions/` (so the attempt is a resume base) and exits 0 at once.

The benchmarks use the sh script because it starts much faster; measure both with
`python bench/fake_codex.py --compare [N]`. No heavy imports: `-S -E` and stdlib only.
"""

from __future__ import annotations

import os
import sys

VERSION = "codex-cli 0.169.0-fake"
HERE = os.path.dirname(os.path.abspath(__file__))
SH_FAKE = os.path.join(HERE, "fake_codex")

FLAGS_HELP = """Usage: codex exec [OPTIONS] [PROMPT] [COMMAND]

Options:
      --json                                   Print events to stdout as JSONL
      --color <COLOR>                          always | never | auto
  -C, --cd <DIR>                               Working root
  -s, --sandbox <SANDBOX_MODE>                 read-only | workspace-write | danger-full-access
      --skip-git-repo-check                    Allow running outside a Git repository
  -m, --model <MODEL>                          Model the agent should use
  -c, --config <key=value>                     Override a config value
      --add-dir <DIR>                          Additional writable directories
      --output-schema <FILE>                   JSON Schema of the final response
  -o, --output-last-message <FILE>             Write the last agent message to FILE
      --dangerously-bypass-approvals-and-sandbox
                                               Skip all confirmation prompts and sandboxing
"""

REPORT = (
    '{"schema_version":"1.0.0","status":"ok","summary":"fake codex did nothing, quickly",'
    '"files_read":[],"files_written":[],"artifacts":[]}'
)
_TAKES_VALUE = frozenset({
    "--color", "-C", "--cd", "-s", "--sandbox", "-m", "--model", "-c", "--config", "--add-dir",
    "--output-schema", "-p", "--profile", "-o", "--output-last-message",
})


def _json_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def stream(spec: str) -> None:
    """FAKE_CODEX_STREAM="N,SECONDS": N command events SECONDS apart before the answer, like an
    agent at work (bench/loop_lag.py); unset: none, the answer comes at once."""
    if not spec:
        return
    import time

    count, gap = spec.split(",")
    for k in range(int(count)):
        sys.stdout.write(f'{{"type":"item.started","item":{{"id":"cmd_{k}","type":'
                         f'"command_execution","command":"step {k}","status":"in_progress"}}}}\n')
        sys.stdout.flush()
        time.sleep(float(gap))


def fake_exec(args: list[str]) -> int:
    if "--help" in args or "-h" in args:
        sys.stdout.write(FLAGS_HELP)
        return 0
    out: str | None = None
    thread: str | None = None
    resume = False
    i = 0
    while i < len(args):
        a = args[i]
        if a in _TAKES_VALUE:
            if a in ("-o", "--output-last-message") and i + 1 < len(args):
                out = args[i + 1]
            i += 2
            continue
        if a == "resume":
            resume = True
        elif not a.startswith("-") and resume and thread is None:
            thread = a
        i += 1
    sys.stdin.buffer.read()
    if thread is None:
        with open("/proc/sys/kernel/random/uuid") as fh:
            thread = fh.read().strip()
    sys.stdout.write(
        f'{{"type":"thread.started","thread_id":"{thread}"}}\n'
        '{"type":"turn.started"}\n'
    )
    stream(os.environ.get("FAKE_CODEX_STREAM", ""))
    sys.stdout.write(
        '{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":'
        f"{_json_str(REPORT)}}}}}\n"
        '{"type":"turn.completed","usage":{"input_tokens":1200,"cached_input_tokens":800,'
        '"output_tokens":40,"reasoning_output_tokens":0}}\n'
    )
    if out:
        with open(out, "w") as fh:
            fh.write(REPORT + "\n")
    home = os.environ.get("CODEX_HOME")
    if home:
        d = os.path.join(home, "sessions", "2026", "01", "01")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"rollout-x-{thread}.jsonl"), "a") as fh:
            fh.write(
                '{"timestamp":"2026-01-01T00:00:00.000Z","type":"session_meta","payload":'
                f'{{"id":"{thread}","cli_version":"0.169.0-fake"}}}}\n'
                '{"timestamp":"2026-01-01T00:00:00.001Z","type":"response_item","payload":'
                '{"type":"message","role":"user","content":[{"type":"input_text","text":'
                '"(prompt)"}]}}\n'
                '{"timestamp":"2026-01-01T00:00:00.002Z","type":"response_item","payload":'
                '{"type":"message","role":"assistant","content":[{"type":"output_text",'
                '"text":"(report)"}]}}\n'
            )
    return 0


def compare(n: int = 100) -> None:
    """Per-spawn wall time of both fakes, doing a full `exec` (stdin, -o, CODEX_HOME)."""
    import subprocess
    import tempfile
    import time

    variants = {
        "baseline: /bin/true (spawn only)": ["/bin/true"],
        "sh  (bench/fake_codex)": [SH_FAKE],
        "py  (python3 -S -E bench/fake_codex.py)": [sys.executable, "-S", "-E", __file__],
    }
    with tempfile.TemporaryDirectory(prefix="phh-fake-") as tmp:
        for v, (label, cmd) in enumerate(variants.items()):
            t0 = time.perf_counter()
            for k in range(n):
                home = os.path.join(tmp, f"{v}-{k}")
                os.mkdir(home)
                subprocess.run(
                    [*cmd, "exec", "--json", "-o", os.path.join(home, "final.txt"), "-"],
                    input=b"prompt\n", stdout=subprocess.DEVNULL, check=True,
                    env={**os.environ, "CODEX_HOME": home},
                )
            dt = (time.perf_counter() - t0) / n
            print(f"{label:42s} {dt * 1000:6.2f} ms/spawn (sequential, n={n})")
    print("(each run: stdin prompt, -o file, $CODEX_HOME/sessions rollout; /bin/true does none)")


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("fake codex: expected a subcommand\n")
        return 2
    if argv[0] in ("--version", "-V"):
        print(VERSION)
        return 0
    if argv[0] == "--compare":
        compare(int(argv[1]) if len(argv) > 1 else 100)
        return 0
    if argv[0] == "exec":
        return fake_exec(argv[1:])
    sys.stderr.write(f"fake codex: only 'exec' is supported (got {argv[0]!r})\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
