"""Where a processor worker's time goes: py-spy samples of the worker during a benchmark run, summed
per stage of the data plane's per-event work (decode, decide, encode, audit record, checkpoint,
produce, librdkafka consume / flush / commit) and per other thread.

`bench.processor --profile DIR` records the worker of its throughput run; the summary is printed
and kept in the results JSON, the raw stacks in `DIR/worker.pyspy.txt` (collapsed stacks, one
`thread;frame;...;frame count` line each: `flamegraph.pl` or speedscope read them).

    python -m bench.profile DIR/worker.pyspy.txt --events N    (summarise a recording again)

py-spy records with `--gil`: each sample is the thread holding the GIL, i.e. the worker's Python
work (its idle detection counts threads blocked inside librdkafka as busy, so without `--gil`
every waiting reader thread would look busy). Native code that keeps the GIL (fastavro, hashing,
signing, librdkafka's produce call) is counted in the Python frame that called it; what runs
outside the GIL (librdkafka's own threads: fetching, lz4, sending; a consume or flush waiting) is
not sampled: it is the worker's CPU time from /proc minus the sampled time, shown on its own row.
"""

from __future__ import annotations

import argparse
import linecache
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.processes import cpu_seconds

DATA_PLANE_THREAD = "data-plane"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
console = Console(width=max(Console().width, 120))  # readable when piped


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recorder:
    """`py-spy record` of one PID (a worker this run started) until `stop()`; a context manager."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        executable = py_spy()
        if executable is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.output = output
        output.parent.mkdir(parents=True, exist_ok=True)
        self.log = output.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [executable, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads", "--gil",
                 "--output", str(output)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = pid
        self.rate = rate
        time.sleep(0.5)  # attached before the measured work starts
        if self.process.poll() is not None:
            raise RuntimeError(f"py-spy exited at once: {self.log.read_text(errors='replace')[-400:]}")
        self.started = time.perf_counter()
        self.cpu_at_start = cpu_seconds(pid)
        self.recorded_s: float | None = None
        self.worker_cpu_s: float | None = None

    def stop(self) -> None:
        """SIGINT (py-spy writes its file), then SIGKILL after 20 s; only the PID started here."""
        if self.recorded_s is None:
            self.recorded_s = time.perf_counter() - self.started
            cpu = cpu_seconds(self.pid)
            if cpu is not None and self.cpu_at_start is not None:
                self.worker_cpu_s = cpu - self.cpu_at_start
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def behind(self) -> str | None:
        """py-spy's own warning when it could not keep its sampling rate (a loaded machine)."""
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if "behind in sampling" in line]
        return lines[-1].removeprefix("py-spy> ").strip() if lines else None

    def summarise(self, events: int) -> Profile:
        profile = summarise(self.output, events, self.rate)
        profile.recorded_s, profile.worker_cpu_s, profile.behind = self.recorded_s, self.worker_cpu_s, self.behind()
        return profile

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# -- summary ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Profile:
    samples: int = 0  # GIL-holding samples
    rate: int = 100
    events: int = 0
    recorded_s: float | None = None
    worker_cpu_s: float | None = None  # every thread of the worker, from /proc, while recorded
    behind: str | None = None  # py-spy's warning if it fell behind its rate
    # stage -> samples, for the data-plane thread; other threads by name
    stages: dict[str, int] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)

    def share(self, samples: int) -> float:
        return samples / self.samples if self.samples else 0.0

    def us_per_event(self, samples: int) -> float:
        return samples / self.rate / self.events * 1e6 if self.events else float("nan")

    def sampled_s(self) -> float:
        return self.samples / self.rate

    def decode_share(self) -> float:
        return self.share(self.stages.get(STAGE_DECODE, 0))


STAGE_DECODE = "decode (schema lookup, Avro read, admission checks)"
STAGE_DECIDE = "decide (policy engine: consent, conditions, treatments, pseudonyms)"
STAGE_ENCODE = "encode released records"
STAGE_AUDIT = "audit record: build + encode"
STAGE_TOKEN = "audit record: oversight token of the subject"
STAGE_OUTPUTS = "route: building outputs (topics, headers, decision entries)"
STAGE_ROUTE = "route: other"
STAGE_DLQ = "dead letters"
STAGE_PLACE = "checkpoint: place (SHA-256 per audit record)"
STAGE_SEAL = "checkpoint: seal (Merkle root, Ed25519, synced state file)"
STAGE_PRODUCE = "produce calls (librdkafka produce)"
STAGE_CONSUME = "librdkafka consume"
STAGE_FLUSH = "flush (wait for acks)"
STAGE_COMMIT = "commit offsets"
STAGE_LOOP = "data plane loop: other"


def _frame(text: str) -> tuple[str, str, int]:
    """`Qualname (path:line)` -> (qualname, path, line)."""
    name, _, where = text.rpartition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    try:
        return name, path, int(line)
    except ValueError:
        return text, "", 0


def _source(path: str, line: int) -> str:
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = PROJECT_ROOT / path
    return linecache.getline(str(candidate), line)


def _audit_line() -> int:
    """First line of the router's audit output statement: frames of `_outputs` at or past it are
    building or encoding the audit record."""
    for number, text in enumerate((PROJECT_ROOT / "processors" / "router.py").read_text().splitlines(), 1):
        if "Output(AUDIT_TOPIC" in text:
            return number
    return 10**9


def stage_of(frames: list[str], audit_line: int) -> str:
    """The data-plane stage a stack (root first) was sampled in."""
    parsed = [_frame(f) for f in frames]
    for index, (name, path, line) in enumerate(parsed):
        deeper = parsed[index + 1:]
        if name.endswith("Checkpointer.place"):
            return STAGE_PLACE
        if name.endswith("Checkpointer.seal"):
            return STAGE_SEAL
        if name.endswith("Router._admit"):
            return STAGE_DECODE
        if name.endswith("PolicyEngine.decide"):
            return STAGE_DECIDE
        if name.endswith("Router._dead_letter"):
            return STAGE_DLQ
        if name.endswith("Router._outputs"):
            if line >= audit_line:
                return STAGE_AUDIT
            text = _source(path, line)
            if "_oversight" in text:
                return STAGE_TOKEN
            if deeper and deeper[0][0].endswith("Encoder.__call__"):
                return STAGE_ENCODE
            if deeper and "policy" in deeper[0][1]:
                return STAGE_DECIDE  # a decision's lazy parts
            return STAGE_OUTPUTS
        if name.endswith("DataPlane._produce"):
            return STAGE_PRODUCE
        if name.endswith("DataPlane._next_batch") or name.endswith("DataPlane._hold"):
            return STAGE_CONSUME
        if name.endswith(("DataPlane._process", "DataPlane.run")) and not deeper:
            text = _source(path, line)
            if ".flush(" in text:
                return STAGE_FLUSH
            if ".commit(" in text:
                return STAGE_COMMIT
            if "consume(" in text:
                return STAGE_CONSUME
            if "produce(" in text:
                return STAGE_PRODUCE
            return STAGE_LOOP
    if any(name.endswith("Router.route") for name, _, _ in parsed):
        return STAGE_ROUTE  # in route, none of the stages above
    return STAGE_LOOP


def summarise(raw: Path, events: int, rate: int) -> Profile:
    """Sum a py-spy raw recording (`--threads`) per data-plane stage and per other thread."""
    profile = Profile(rate=rate, events=events)
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    audit_line = _audit_line()
    for text in raw.read_text(errors="replace").splitlines():
        stack, _, count = text.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        thread, *frames = stack.split(";")
        profile.samples += samples
        name = thread.split("): ", 1)[-1] if "): " in thread else thread
        if name == DATA_PLANE_THREAD or any("DataPlane." in frame for frame in frames):
            stages[stage_of(frames, audit_line)] += samples
        else:
            threads[name] += samples
    profile.stages = dict(stages.most_common())
    profile.threads = dict(threads.most_common())
    return profile


def table(profile: Profile, title: str) -> Table:
    out = Table(title=title)
    out.add_column("where the worker's time holding the GIL goes (py-spy --gil)")
    out.add_column("share", justify="right")
    out.add_column("µs per event", justify="right")
    if profile.worker_cpu_s is not None and profile.events:
        out.add_row("[b]worker CPU, every thread (/proc)", "", f"[b]{profile.worker_cpu_s / profile.events * 1e6:,.1f}")
        outside = profile.worker_cpu_s - profile.sampled_s()
        # GIL time sampled includes a holder waiting for a core: on a loaded machine it can exceed the CPU time
        out.add_row("  outside the GIL (librdkafka threads, lz4, ...) = CPU - sampled", "",
                    f"{outside / profile.events * 1e6:,.1f}" if outside > 0 else "n/a: machine loaded")
    plane = sum(profile.stages.values())
    out.add_row("[b]data-plane thread", f"[b]{profile.share(plane):.0%}", f"[b]{profile.us_per_event(plane):,.1f}")
    for stage, samples in profile.stages.items():
        out.add_row(f"  {stage}", f"{profile.share(samples):.1%}", f"{profile.us_per_event(samples):,.1f}")
    for thread, samples in profile.threads.items():
        out.add_row(f"thread {thread}", f"{profile.share(samples):.1%}", f"{profile.us_per_event(samples):,.1f}")
    return out


def as_json(profile: Profile) -> dict:
    data = asdict(profile)
    data["share"] = {stage: profile.share(s) for stage, s in {**profile.stages, **profile.threads}.items()}
    data["us_per_event"] = {stage: profile.us_per_event(s) for stage, s in {**profile.stages, **profile.threads}.items()}
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy raw recording (recorded with --threads)")
    parser.add_argument("--events", type=int, required=True, help="events the worker decided while recorded")
    parser.add_argument("--rate", type=int, default=100, help="py-spy sampling rate of the recording, Hz")
    args = parser.parse_args()
    profile = summarise(args.raw, args.events, args.rate)
    console.print(table(profile, f"{args.raw}: {profile.samples:,} samples, {args.events:,} events"))


if __name__ == "__main__":
    main()
