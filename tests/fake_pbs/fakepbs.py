"""A fake PBS Professional for tests (never shipped): qsub, qstat, qdel and an mpirun look-alike.

`qsub` reads the script's `#PBS` directives and its own options like the real one, queues the job
in $FAKE_PBS_HOME and starts a detached runner that waits for `-W depend=afterany:ID`, then
executes the script with bash in a simulated PBS environment:

    PBS_JOBID=<n>.fakepbs  PBS_JOBNAME  PBS_O_WORKDIR (qsub's cwd)  PBS_O_PATH  PBS_QUEUE
    PBS_NODEFILE  listing `select` hosts 127.0.0.1, 127.0.0.2, ... (all this machine)
    PBS_LOCALDIR  a private folder under $FAKE_PBS_HOME

The job environment starts nearly empty, like a real batch job: HOME, USER, LANG, PATH (qsub's),
the PBS variables, `-v` variables (a bare `-v NAME` takes NAME's value from qsub's environment)
and the names listed in $FAKE_PBS_PASS_ENV. A job running longer than walltime x
$FAKE_PBS_TIME_SCALE seconds is killed (SIGTERM, then SIGKILL), as PBS does at its walltime.
With FAKE_PBS_SYNC=1, qsub runs the job to completion before it returns.

Array jobs as PBS Pro has them (checked against OpenPBS's own tests, tests/functional/pbs_job_array.py):
`qsub -J START-END[:STEP][%MAX]` prints `<n>[].fakepbs`; each subjob `<n>[i].fakepbs` runs the script
with PBS_ARRAY_INDEX=i and PBS_ARRAY_ID=<n>[].fakepbs, at most MAX at a time (max_run_subjobs).
`-o` may hold `^array_index^`. The array is Q, then B while subjobs run, then F with Exit_status 0
(every subjob exited 0), 1 (some did not) or 2 (some were deleted); finished subjobs are X.
`qstat -t` lists the subjobs too. `-W depend=afterok:ID` waits for ID to finish and runs only
if it ended with exit status 0; otherwise the dependent job is deleted without running, as PBS does.

Killing a job (qdel, walltime) sends SIGTERM, waits $FAKE_PBS_KILL_DELAY seconds (default 5, PBS's
kill_delay) and sends SIGKILL to what is left. $FAKE_PBS_KILL_SCOPE chooses who gets the SIGTERM:
`tree` (default: every process below the job script, as a cgroup-based kill does) or `session`
(only the processes in the job script's session, as PBS MoM's kill by session id: a Jupyter
kernel or launcher that started its own session is not reached and must be told by its parent).
The SIGKILL always goes to the whole tree.

`mpirun` starts every rank on this machine with OpenMPI's OMPI_COMM_WORLD_* variables, so a
"multi-node" launch runs here as it would across nodes. Like OpenMPI's mpirun it forwards SIGUSR1
and SIGUSR2 to every rank, and on SIGTERM/SIGINT it terminates the ranks (SIGTERM, SIGKILL after
a few seconds).
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SUFFIX = "fakepbs"


def _home() -> Path:
    home = os.environ.get("FAKE_PBS_HOME")
    if not home:
        sys.exit("fake PBS: set FAKE_PBS_HOME")
    path = Path(home)
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def _job_file(home: Path, num: int) -> Path:
    return home / "jobs" / f"{num}.json"


def _load(home: Path, num: int) -> dict:
    return json.loads(_job_file(home, num).read_text())


def _save(home: Path, job: dict) -> None:
    path = _job_file(home, job["num"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=1))
    os.replace(tmp, path)


def _update(home: Path, num: int, **changes) -> dict:
    with open(home / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = _load(home, num)
        job.update(changes)
        _save(home, job)
        return job


def _next_num(home: Path) -> int:
    with open(home / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = home / "counter"
        num = int(counter.read_text()) + 1 if counter.exists() else 1001
        counter.write_text(str(num))
        return num


_ID = re.compile(r"^(\d+)(\[(\d*)\])?(\.\S+)?$")


def _num(jobid: str) -> int:
    m = _ID.match(jobid.strip())
    if not m:
        raise SystemExit(f"qstat: illegally formed job identifier: {jobid}")
    return int(m.group(1))


def _index(jobid: str) -> str | None:
    """"3" for a subjob id `n[3]`, "" for an array id `n[]`, None for a plain job id."""
    m = _ID.match(jobid.strip())
    return m.group(3) if m and m.group(2) else None


def _array_range(value: str) -> tuple[list[int], int | None]:
    m = re.match(r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$", value)
    if not m or int(m.group(1)) >= int(m.group(2)) or (m.group(4) is not None and int(m.group(4)) < 1):
        raise SystemExit(f"qsub: illegal -J value {value}")
    start, end, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
    return list(range(start, end + 1, step)), int(m.group(4)) if m.group(4) else None


def _hms(seconds: int) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _seconds(hms: str) -> int:
    total = 0
    for part in hms.split(":"):
        total = total * 60 + int(part)
    return total


# ------------------------------------------------------------------------------------ qsub
def _directives(script: str) -> list[str]:
    """Options from the leading `#PBS` lines (until the first command), split like a shell would."""
    import shlex

    args: list[str] = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#PBS"):
            args += shlex.split(stripped[4:])
        elif stripped and not stripped.startswith("#"):
            break
    return args


def _parse_options(args: list[str], opts: dict) -> list[str]:
    rest = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-P", "-q", "-N", "-j", "-o", "-e", "-W", "-v", "-l", "-J"):
            value = args[i + 1]
            i += 2
            if a == "-l":
                key, _, val = value.partition("=")
                opts.setdefault("resources", {})[key] = val
            elif a == "-W":
                key, _, val = value.partition("=")
                if key == "depend":
                    kind, _, ids = val.partition(":")
                    if kind not in ("afterany", "afterok"):
                        raise SystemExit(f"qsub: fake PBS supports only depend=afterany|afterok (got {kind})")
                    opts["depend"] = ids.split(":")
                    opts["depend_kind"] = kind
            elif a == "-v":
                opts.setdefault("vars", []).extend(v for v in value.split(",") if v)
            else:
                opts[a] = value
        else:
            rest.append(a)
            i += 1
    return rest


def qsub(argv: list[str]) -> int:
    home = _home()
    cli: dict = {}
    rest = _parse_options(argv, cli)
    if len(rest) != 1:
        print("usage: qsub [options] script", file=sys.stderr)
        return 2
    script = Path(rest[0]).resolve()
    if not script.is_file():
        print(f"qsub: script file:: No such file or directory: {rest[0]}", file=sys.stderr)
        return 2
    opts: dict = {}
    _parse_options(_directives(script.read_text()), opts)
    for key, value in cli.items():  # command-line options win over directives
        if key == "resources":
            opts.setdefault("resources", {}).update(value)
        elif key == "vars":
            opts.setdefault("vars", []).extend(value)
        else:
            opts[key] = value
    res = opts.get("resources", {})
    queue = opts.get("-q", "")
    if not opts.get("-P"):
        print("qsub: a group must be given with -P (ABCI)", file=sys.stderr)
        return 2
    if queue not in ("rt_HF", "rt_HG", "rt_HC"):
        print(f"qsub: Unknown queue {queue!r}", file=sys.stderr)
        return 2
    select = int(res.get("select", "1"))
    if select > 1 and queue != "rt_HF":
        print(f"qsub: {queue} allows select=1 only", file=sys.stderr)
        return 2
    variables = {}
    for item in opts.get("vars", []):
        name, eq, value = item.partition("=")
        if eq:
            variables[name] = value
        elif name in os.environ:
            variables[name] = os.environ[name]
    for dep in opts.get("depend", []):
        if not _job_file(home, _num(dep)).exists():
            print(f"qsub: Unknown Job Id {dep}", file=sys.stderr)
            return 2
    array = _array_range(opts["-J"]) if "-J" in opts else None
    num = _next_num(home)
    job = {
        "num": num, "id": f"{num}[].{SUFFIX}" if array else f"{num}.{SUFFIX}",
        "name": opts.get("-N", script.name)[:236],
        "depend_kind": opts.get("depend_kind", "afterany"),
        "array": {"indices": array[0], "max_run": array[1]} if array else None,
        "subjobs": {str(i): {"state": "Q", "exit_status": None, "stime": None, "pid": None}
                    for i in array[0]} if array else None,
        "group": opts["-P"], "queue": queue, "select": select,
        "walltime": res.get("walltime", "01:00:00"), "depend": [str(_num(d)) for d in opts.get("depend", [])],
        "vars": variables, "script": str(script), "workdir": os.getcwd(), "argv": argv,
        "output": opts.get("-o", ""), "path": os.environ.get("PATH", ""),
        "pass_env": {k: os.environ[k] for k in os.environ.get("FAKE_PBS_PASS_ENV", "").split(",")
                     if k and k in os.environ},
        "state": "Q", "exit_status": None, "qtime": time.time(), "stime": None, "etime": None,
        "runner_pid": None, "deleted": False,
    }
    _save(home, job)
    if os.environ.get("FAKE_PBS_SYNC") == "1":
        _run(home, num)
    else:
        log = open(home / "jobs" / f"{num}.runner.log", "w")
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_run", str(num)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env={**os.environ})
        _update(home, num, runner_pid=proc.pid)
    print(job["id"])
    return 0


# ------------------------------------------------------------------------------------ runner
def _job_env(home: Path, job: dict, index: int | None = None) -> dict:
    nodefile = home / "nodefiles" / str(job["num"])
    nodefile.parent.mkdir(exist_ok=True)
    nodefile.write_text("".join(f"127.0.0.{i + 1}\n" for i in range(job["select"])))
    local = home / "local" / str(job["num"])
    local.mkdir(parents=True, exist_ok=True)
    env = {k: os.environ[k] for k in ("HOME", "USER", "LOGNAME", "LANG", "TZ") if k in os.environ}
    env.update(job["pass_env"])
    env.update({
        "PATH": job["path"], "PBS_JOBID": job["id"], "PBS_JOBNAME": job["name"],
        "PBS_O_WORKDIR": job["workdir"], "PBS_O_PATH": job["path"], "PBS_O_HOME": env.get("HOME", ""),
        "PBS_QUEUE": job["queue"], "PBS_NODEFILE": str(nodefile), "PBS_LOCALDIR": str(local),
        "PBS_ENVIRONMENT": "PBS_BATCH", "ENVIRONMENT": "BATCH",
        # The fake cluster's GPU queues run on this CPU: say so, or the kit refuses to train there.
        "TUNEKIT_DEVICE": "cpu",
    })
    if index is not None:
        env.update({"PBS_JOBID": _sub_id(job, index), "PBS_ARRAY_INDEX": str(index), "PBS_ARRAY_ID": job["id"]})
    env.update(job["vars"])
    return env


def _sub_id(job: dict, index: int | str) -> str:
    return job["id"].replace("[]", f"[{index}]", 1)


def _update_sub(home: Path, num: int, index: int, **changes) -> dict:
    with open(home / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = _load(home, num)
        job["subjobs"][str(index)].update(changes)
        _save(home, job)
        return job


def _output_path(job: dict, index: int | None) -> Path:
    if job["output"]:
        return Path(job["output"].replace("^array_index^", str(index if index is not None else "")))
    suffix = f".{index}" if index is not None else ""
    return Path(job["workdir"]) / f"{job['name']}.o{job['num']}{suffix}"


def _run_script(home: Path, job: dict, index: int | None) -> int:
    """Run the job script (one subjob when `index` is given) under its walltime; its exit status."""
    scale = float(os.environ.get("FAKE_PBS_TIME_SCALE", "1"))
    limit = _seconds(job["walltime"]) * scale
    out = _output_path(job, index)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as log:
        proc = subprocess.Popen(["bash", job["script"]], cwd=os.environ.get("HOME", "/"),
                                env=_job_env(home, job, index), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        if index is None:
            _update(home, job["num"], state="R", stime=time.time(), pid=proc.pid)
        else:
            _update_sub(home, job["num"], index, state="R", stime=time.time(), pid=proc.pid)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            log.write(f"=>> PBS: job killed: walltime {int(limit)} exceeded limit\n")
            log.flush()
            _kill_group(proc)
            return 271


def _run_array(home: Path, num: int) -> None:
    """Run every subjob, at most max_run at a time; the array ends F with PBS Pro's exit status rule."""
    import threading

    job = _update(home, num, state="B", stime=time.time())
    cap = job["array"]["max_run"] or len(job["array"]["indices"])
    slots = threading.Semaphore(cap)
    threads = []

    def one(index: int) -> None:
        with slots:
            if _load(home, num)["deleted"]:
                _update_sub(home, num, index, state="X", exit_status=-1, deleted=True)
                return
            rc = _run_script(home, job, index)
            deleted = _load(home, num)["subjobs"][str(index)].get("deleted", False)
            _update_sub(home, num, index, state="X", exit_status=271 if deleted else rc, etime=time.time())

    for index in job["array"]["indices"]:
        t = threading.Thread(target=one, args=(index,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    subs = _load(home, num)["subjobs"].values()
    status = 2 if any(s.get("deleted") for s in subs) else 0 if all(s["exit_status"] == 0 for s in subs) else 1
    _update(home, num, state="F", etime=time.time(), exit_status=status)


def _run(home: Path, num: int) -> None:
    job = _load(home, num)
    while True:  # afterany: wait until every dependency has finished, whatever its exit status
        pending = [d for d in job["depend"] if _load(home, int(d))["state"] != "F"]
        if not pending:
            break
        time.sleep(0.2)
        job = _load(home, num)
        if job["deleted"]:
            return
    if _load(home, num)["deleted"]:
        return
    if job["depend_kind"] == "afterok" and any(_load(home, int(d))["exit_status"] != 0 for d in job["depend"]):
        # PBS deletes a job whose afterok dependency can no longer be satisfied.
        _update(home, num, state="F", etime=time.time(), exit_status=-3, deleted=True,
                comment="dependency not satisfied: a job it depends on did not exit 0")
        for index in (job.get("subjobs") or {}):
            _update_sub(home, num, int(index), state="X", exit_status=-3, deleted=True)
        return
    if job.get("array"):
        _run_array(home, num)
        return
    rc = _run_script(home, job, None)
    job = _load(home, num)
    _update(home, num, state="F", etime=time.time(), exit_status=271 if job["deleted"] else rc)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (PBS kills a job's whole tree, kernels in own sessions included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _session(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _kill_tree(pid: int) -> None:
    """SIGTERM the job (see KILL_SCOPE), then SIGKILL the whole tree after the kill delay (as PBS)."""
    tree = [pid, *_descendants(pid)]  # before killing: orphans are re-parented and lost to us
    delay = float(os.environ.get("FAKE_PBS_KILL_DELAY", "5"))
    scope = os.environ.get("FAKE_PBS_KILL_SCOPE", "tree")
    term = [t for t in tree if _session(t) == _session(pid)] if scope == "session" else tree
    for sig, targets, wait in ((signal.SIGTERM, term, delay), (signal.SIGKILL, tree, 0.0)):
        for target in targets:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
        end = time.time() + wait
        while time.time() < end and any(_alive(t) for t in tree):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_group(proc: subprocess.Popen) -> None:
    _kill_tree(proc.pid)
    proc.wait()


# ------------------------------------------------------------------------------------ qstat/qdel
def _sub_state_json(job: dict, index: str) -> dict:
    sub = job["subjobs"][index]
    info = {"Job_Name": job["name"], "job_state": sub["state"], "queue": job["queue"], "project": job["group"],
            "array_index": int(index), "qtime": _stamp(job["qtime"])}
    if sub["stime"]:
        info["stime"] = _stamp(sub["stime"])
    if sub["state"] == "X":
        info["Exit_status"] = sub["exit_status"]
    return info


def _state_json(job: dict) -> dict:
    info = {
        "Job_Name": job["name"], "job_state": job["state"], "queue": job["queue"],
        "project": job["group"],
        "Resource_List": {"select": str(job["select"]), "walltime": job["walltime"]},
        "qtime": _stamp(job["qtime"]),
    }
    if job["stime"]:
        info["stime"] = _stamp(job["stime"])
    if job["state"] == "F":
        info["Exit_status"] = job["exit_status"]
    if job["depend"]:
        info["depend"] = job.get("depend_kind", "afterany") + ":" + ":".join(f"{d}.{SUFFIX}" for d in job["depend"])
    if job.get("comment"):
        info["comment"] = job["comment"]
    if job.get("array"):
        info["array"] = "True"
        indices = job["array"]["indices"]
        info["array_indices_submitted"] = f"{indices[0]}-{indices[-1]}"
        if job["array"]["max_run"]:
            info["max_run_subjobs"] = job["array"]["max_run"]
    return info


def _stamp(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch).strftime("%a %b %d %H:%M:%S %Y")


def _split_operands(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options, operands) as getopt splits them: everything after `--` is an operand."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return [a for a in argv if a.startswith("-")], [a for a in argv if not a.startswith("-")]


def qstat(argv: list[str]) -> int:
    home = _home()
    flags, operands = _split_operands(argv)
    ids = [a for a in operands if a != "json"]
    history = "-x" in flags
    subjobs = "-t" in flags
    rc = 0
    found = {}
    for jobid in ids:
        path = _job_file(home, _num(jobid))
        job = json.loads(path.read_text()) if path.exists() else None
        index = _index(jobid)
        if job is not None and (index is None) != (job.get("array") is None):
            job = None  # `n[]` for a plain job, or `n` for an array: PBS does not know that id
        if job is not None and index and index not in job["subjobs"]:
            job = None
        if job is not None and index:  # one subjob
            sub = dict(job, state=job["subjobs"][index]["state"])
            if sub["state"] == "X" and not history:
                print(f"qstat: {jobid} Job has finished, use -x or -H to obtain historical job information",
                      file=sys.stderr)
                rc = 35
            else:
                found[_sub_id(job, index)] = (job, index)
            continue
        if job is None:
            print(f"qstat: Unknown Job Id {jobid}", file=sys.stderr)
            rc = 153
        elif job["state"] == "F" and not history:
            print(f"qstat: {jobid} Job has finished, use -x or -H to obtain historical job information",
                  file=sys.stderr)
            rc = 35
        else:
            found[job["id"]] = (job, None)
            if subjobs and job.get("array"):
                for i in job["subjobs"]:
                    found[_sub_id(job, i)] = (job, i)
    infos = {jid: _state_json(job) if index is None else _sub_state_json(job, index)
             for jid, (job, index) in found.items()}
    if "-F" in flags:
        print(json.dumps({"timestamp": int(time.time()), "pbs_version": "fake", "Jobs": infos}, indent=4))
    elif "-f" in flags:
        for jid, (job, _) in found.items():
            info = infos[jid]
            print(f"Job Id: {jid}")
            print(f"    Job_Name = {info['Job_Name']}")
            print(f"    job_state = {info['job_state']}")
            print(f"    Resource_List.walltime = {job['walltime']}")
            if "stime" in info:
                print(f"    stime = {info['stime']}")
            print()
    else:
        for jid, info in infos.items():
            print(f"{jid:<20} {info['Job_Name'][:16]:<16} {info['job_state']}")
    return rc


def qdel(argv: list[str]) -> int:
    home = _home()
    rc = 0
    for jobid in _split_operands(argv)[1]:
        num = _num(jobid)
        if not _job_file(home, num).exists():
            print(f"qdel: Unknown Job Id {jobid}", file=sys.stderr)
            rc = 153
            continue
        index = _index(jobid)
        if index:
            job = _update_sub(home, num, int(index), deleted=True)
            sub = job["subjobs"][index]
            if sub["state"] == "R" and sub.get("pid"):
                _kill_tree(sub["pid"])
            elif sub["state"] == "Q":
                _update_sub(home, num, int(index), state="X", exit_status=-1)
            continue
        job = _update(home, num, deleted=True)
        if job.get("array") and job["state"] != "F":
            for i, sub in job["subjobs"].items():
                if sub["state"] == "R" and sub.get("pid"):
                    _update_sub(home, num, int(i), deleted=True)
                    _kill_tree(sub["pid"])
            if job["state"] == "Q":
                _update(home, num, state="F", exit_status=2, etime=time.time())
            continue
        if job["state"] == "F":
            print(f"qdel: Job has finished {jobid}", file=sys.stderr)
            rc = 35
        elif job["state"] == "Q":
            _update(home, num, state="F", exit_status=-1, etime=time.time())
        elif job.get("pid"):
            _kill_tree(job["pid"])
    return rc


# ------------------------------------------------------------------------------------ mpirun
def mpirun(argv: list[str]) -> int:
    """OpenMPI-style `mpirun -np N [--npernode K] [-hostfile F | --host h1:K,h2:K] [-x VAR]... cmd`."""
    np_, per_node, hostfile, hostlist = None, None, None, None
    i = 0
    takes_value = {"-np", "-n", "--np", "-npernode", "--npernode", "-hostfile", "--hostfile",
                   "-host", "--host", "-H",
                   "-x", "-bind-to", "--bind-to", "-map-by", "--map-by", "-mca", "--mca"}
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a in ("-mca", "--mca"):
            i += 3
            continue
        if a in takes_value:
            value = argv[i + 1]
            if a in ("-np", "-n", "--np"):
                np_ = int(value)
            elif a in ("-npernode", "--npernode"):
                per_node = int(value)
            elif a in ("-hostfile", "--hostfile"):
                hostfile = value
            elif a in ("-host", "--host", "-H"):
                hostlist = [h.split(":")[0] for h in value.split(",") if h]
            i += 2
        else:
            i += 1  # flags such as --oversubscribe
    cmd = argv[i:]
    hosts = hostlist or (Path(hostfile).read_text().split() if hostfile else ["127.0.0.1"])
    np_ = np_ or len(hosts) * (per_node or 1)
    per_node = per_node or max(1, np_ // len(hosts))
    if not cmd or np_ > len(hosts) * per_node:
        print(f"mpirun: cannot place {np_} ranks on {len(hosts)} hosts x {per_node}", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen] = []

    def forward(signum, frame):  # OpenMPI: SIGUSR1/2 reach every rank
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def terminate(signum, frame):  # OpenMPI: SIGTERM/SIGINT end the job within seconds
        for p in procs:
            if p.poll() is None:
                p.terminate()
        time.sleep(3)
        for p in procs:
            if p.poll() is None:
                p.kill()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGUSR1, forward)
    signal.signal(signal.SIGUSR2, forward)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    for rank in range(np_):
        env = {**os.environ, "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(np_),
               "OMPI_COMM_WORLD_LOCAL_RANK": str(rank % per_node),
               "OMPI_COMM_WORLD_LOCAL_SIZE": str(per_node),
               "OMPI_COMM_WORLD_NODE_RANK": str(rank // per_node),
               "FAKE_MPI_HOST": hosts[rank // per_node]}
        procs.append(subprocess.Popen(cmd, env=env))
    rc = 0
    while procs:
        for p in list(procs):
            code = p.poll()
            if code is None:
                continue
            procs.remove(p)
            if code != 0 and rc == 0:
                rc = code
                for other in procs:  # like mpirun: one failed rank ends the job
                    other.terminate()
        time.sleep(0.1)
    return rc


def main(tool: str, argv: list[str]) -> int:
    if tool == "_run":
        _run(_home(), int(argv[0]))
        return 0
    return {"qsub": qsub, "qstat": qstat, "qdel": qdel, "mpirun": mpirun}[tool](argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
