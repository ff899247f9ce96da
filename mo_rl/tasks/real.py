"""Real task families: ``math`` (integer arithmetic and word problems), ``code`` (small Python functions checked
by unit tests in the sandbox) and ``toolcall`` (pick a tool and its arguments, answer in JSON).

Rows are generated procedurally from the caller's seeded ``random.Random`` (nothing is downloaded); each family
also reads a user's data through HF ``datasets`` (``task.options.path=``: a JSONL, parquet or CSV file, a
``save_to_disk`` directory, or a hub dataset id with ``task.options.split=``; ``+task.options.columns={prompt:
question}`` maps its column names to these):
math ``prompt, answer``; code ``prompt, tests`` (a list of assert statements, the same number in every row, and
optionally ``solution`` for warm-up); toolcall ``prompt, tool, args`` (args: a JSON object or its string).
"""

from __future__ import annotations

import ast
import json
import random
import re
from functools import partial
from pathlib import Path

import mo_rl.rewards.real as real_rewards  # registers the rewards these tasks name
from mo_rl.errors import MoRLError
from mo_rl.tasks.base import Task, register_task

DATA = Path(__file__).parent / "data"
# Each family's prompt: an instruction (what a system message would say) and one worked example, then the row's
# question. Measured on SmolLM2-135M-Instruct at step 0, the bare question gave base rate 0 on every math and toolcall
# objective (no group had any spread); with these prompts each objective has a non-zero base rate (docs/tasks.md).
MATH_PROMPT = ("Solve the math problem. Work it out in one short line, then give the final answer as "
               "<answer>number</answer>.\n"
               "Example:\nQuestion: What is 4 * 3 + 2?\nSolution: 4 * 3 = 12, 12 + 2 = 14. <answer>14</answer>\n"
               "Question: {question}\nSolution:")
TOOL_PROMPT = ("Call one of the tools for the request. Reply with only a JSON object "
               '{{"name": tool name, "arguments": {{parameter: value}}}}.\n'
               'Example:\nTools: {{"name": "get_time", "description": "Current time in a time zone.", '
               '"parameters": {{"zone": "string"}}}}\nRequest: What time is it in UTC?\n'
               'Reply: {{"name": "get_time", "arguments": {{"zone": "UTC"}}}}\n'
               "Tools:\n{schemas}\nRequest: {request}\nReply:")
CODE_PROMPT = ("Write the Python function. Reply with only the code in one ```python block.\n"
               "Example:\nTask: Write a Python function `double(x)`. Return x times 2.\n"
               "```python\ndef double(x):\n    return x * 2\n```\n"
               "Task: Write a Python function `{name}({params})`. {description}\n")
NAMES = ["Ana", "Bo", "Cy", "Dee", "Eli", "Fay"]


FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _datasets(path: str):
    """HF ``datasets`` (the ``data`` extra), its progress bars off, or a one-line MoRLError saying how to install
    it."""
    try:
        import datasets
    except ImportError as e:
        raise MoRLError(f"task option path={path!r}: reading task data needs the datasets package, not installed "
                        "here: pip install 'mo-rl[data]' (or pip install datasets)") from e
    datasets.disable_progress_bars()
    return datasets


def _open_dataset(path: str, split: str):
    """A ``datasets.Dataset``: a local JSONL/JSON/parquet/CSV file, a ``save_to_disk`` directory (a DatasetDict's
    ``split``), or a hub dataset id (its ``split``; cached or downloaded by datasets)."""
    p = Path(path).expanduser()
    if p.is_dir():
        datasets = _datasets(path)
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise MoRLError(f"task option split={split!r}: {path!r} has splits {', '.join(ds)}")
            ds = ds[split]
        return ds
    if p.is_file():
        builder = FILE_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise MoRLError(f"task option path={path!r}: unknown file type {p.suffix!r}; allowed: "
                            f"{', '.join(FILE_BUILDERS)}, a save_to_disk directory or a hub dataset id")
        if p.stat().st_size == 0:
            raise MoRLError(f"task option path={path!r}: the file has no rows")
        return _datasets(path).load_dataset(builder, data_files=str(p), split="train")
    if p.suffix.lower() in FILE_BUILDERS or path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise MoRLError(f"task option path={path!r}: no such file or directory; expected a JSONL, parquet or CSV "
                        "file, a save_to_disk directory, or a hub dataset id (owner/name)")
    return _datasets(path).load_dataset(path, split=split)


def _bad_json_line(p: Path) -> int | None:
    """The first line of a JSONL file that is not a JSON object (for the error message), None if all are."""
    for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            if line.strip() and not isinstance(json.loads(line), dict):
                return i
        except ValueError:
            return i
    return None


def _chain(e: BaseException) -> str:
    """The messages of an exception and its causes (datasets wraps arrow's errors)."""
    parts = []
    while e is not None and len(parts) < 10:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return " | ".join(parts)


def load_rows(path: str, columns: list[str], split: str = "train", mapping: dict | None = None) -> list[dict]:
    """Rows of a dataset (``_open_dataset``), each with ``prompt`` and ``columns``. ``mapping`` renames dataset
    columns to ours, ``{prompt: question, answer: answer}`` (ours: theirs). Raises MoRLError in one line."""
    try:
        ds = _open_dataset(path, split)
    except MoRLError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the user gets one line
        p = Path(path).expanduser()
        bad = _bad_json_line(p) if p.is_file() and FILE_BUILDERS.get(p.suffix.lower()) == "json" else None
        if bad is not None:
            raise MoRLError(f"task option path={path!r}: line {bad} is not JSON") from e
        mixed = re.search(r"Column\(/?([^)]*)\) changed from (\w+) to (\w+)", _chain(e))
        if mixed:  # arrow columns have one type
            raise MoRLError(f"task option path={path!r}: column {mixed.group(1)!r} holds both {mixed.group(2)}s and "
                            f"{mixed.group(3)}s; write every row's value as one type (e.g. all strings)") from e
        if "corresponds to no data" in str(e):  # datasets' words for an empty split
            raise MoRLError(f"task option path={path!r}: split {split!r} has no rows") from e
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MoRLError(f"task option path={path!r} (split={split!r}): cannot load it ({type(e).__name__}: "
                        f"{first})") from e
    if mapping is not None and not isinstance(mapping, dict):
        raise MoRLError(f"task option columns={mapping!r}: must be a mapping ours: theirs, e.g. "
                        "+task.options.columns={prompt: question, answer: answer}")
    mapping = dict(mapping or {})
    for ours, theirs in mapping.items():
        if theirs not in ds.column_names:
            raise MoRLError(f"task option columns.{ours}={theirs!r}: {path!r} has no column {theirs!r}; it has "
                            f"{', '.join(ds.column_names)}")
    names = [c for c in ds.column_names if c not in mapping] + list(mapping)  # a mapped name replaces its own
    missing = [c for c in ["prompt", *columns] if c not in names]
    if missing:
        raise MoRLError(f"task option path={path!r}: the data lacks {', '.join(missing)}; each row needs prompt, "
                        f"{', '.join(columns)} (it has {', '.join(ds.column_names) or 'no columns'}; map yours with "
                        "+task.options.columns={prompt: <column>, ...})")
    if len(ds) == 0:
        raise MoRLError(f"task option path={path!r}: split {split!r} has no rows")
    if not isinstance(ds, _datasets(path).Dataset):  # imported by _open_dataset already
        raise MoRLError(f"task option path={path!r}: not a dataset of rows ({type(ds).__name__})")
    rows = [{**{k: v for k, v in r.items() if k not in mapping}, **{o: r[t] for o, t in mapping.items()}}
            for r in ds.to_list()]
    bad = next((i for i, r in enumerate(rows) if not isinstance(r["prompt"], str)), None)
    if bad is not None:
        raise MoRLError(f"task option path={path!r}: row {bad + 1} of split {split!r} has prompt "
                        f"{rows[bad]['prompt']!r}; every row's prompt must be a string")
    return rows


def _from_file(rows: list[dict], rng: random.Random, n: int, split: str) -> list[dict]:
    return [dict(rng.choice(rows)) for _ in range(n)]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MoRLError(f"task option {name}={value!r}: must be a positive integer")
    return value


# ---------------------------------------------------------------------------------------------------------- math

def math_problem(rng: random.Random, max_operand: int) -> tuple[str, int]:
    """One (question, integer answer) pair; the templates mix bare arithmetic with short word problems."""
    a, b, c = (rng.randint(1, max_operand) for _ in range(3))
    who = rng.choice(NAMES)
    hi, lo = max(a, b), min(a, b)  # subtraction stays non-negative, as in a word problem
    templates = [
        (f"What is {a} + {b}?", a + b),
        (f"What is {hi} - {lo}?", hi - lo),
        (f"What is {a} * {b}?", a * b),
        (f"What is {a} * {b} + {c}?", a * b + c),
        (f"{who} has {a} apples and buys {b} more. How many apples does {who} have?", a + b),
        (f"{who} has {a} boxes with {b} pencils in each. How many pencils are there?", a * b),
        (f"{who} had {hi} coins and gave away {lo}. How many coins are left?", hi - lo),
    ]
    return rng.choice(templates)


def _math_rows(max_operand: int, max_chars: int, rng: random.Random, n: int, split: str) -> list[dict]:
    rows = []
    for _ in range(n):
        q, ans = math_problem(rng, max_operand)
        rows.append({"prompt": MATH_PROMPT.format(question=q), "answer": str(ans), "max_chars": max_chars})
    return rows


def _math_warmup(sample, rng: random.Random) -> tuple[str, str]:
    row = sample(rng, 1, "train")[0]
    return row["prompt"], f"<answer>{row['answer']}</answer>"


@register_task("math")
def math(path: str | None = None, max_chars: int = 64, max_operand: int = 20, split: str = "train",
         columns: dict | None = None) -> Task:
    """Integer arithmetic and word problems; the answer goes in ``<answer>...</answer>``."""
    max_chars, max_operand = _positive_int("max_chars", max_chars), _positive_int("max_operand", max_operand)
    if path:
        rows = [{"max_chars": max_chars, **r, "answer": str(r["answer"])} for r in load_rows(path, ["answer"], split, columns)]
        sample = partial(_from_file, rows)
    else:
        sample = partial(_math_rows, max_operand, max_chars)
    return Task(
        name="math",
        objectives=["math_correct", "math_format", "math_length"],
        weights=[0.6, 0.2, 0.2],
        sample=sample,
        success_objective="math_correct",
        success_threshold=1.0,
        warmup=partial(_math_warmup, sample),
        description="arithmetic word problems: correctness vs answer format vs brevity",
        options={"path": path, "max_chars": max_chars, "max_operand": max_operand},
    )


# ---------------------------------------------------------------------------------------------------------- code

def _problems() -> list[dict]:
    return json.loads((DATA / "code_problems.json").read_text(encoding="utf-8"))


def code_problem(spec: dict, k: int | None) -> dict:
    """A row from a problem spec: prompt, assert tests whose expected values come from the reference solution."""
    fill = (lambda s: s.replace("{k}", str(k))) if k is not None else (lambda s: s)
    solution = fill(spec["solution"])
    ns: dict = {}
    exec(solution, ns)  # our own reference code from the package data, never model output
    fn = ns[spec["name"]]
    tests = []
    for args in map(fill, spec["inputs"]):
        expected = fn(*ast.literal_eval(args))
        tests.append(f"assert {spec['name']}{args} == {expected!r}")
    prompt = CODE_PROMPT.format(name=spec["name"], params=spec["params"], description=fill(spec["description"]))
    return {"prompt": prompt, "tests": tests, "entry_point": spec["name"],
            "solution": f"```python\n{solution}```"}


def _code_rows(problems: list[dict], rng: random.Random, n: int, split: str) -> list[dict]:
    rows = []
    for _ in range(n):
        spec = rng.choice(problems)
        k = rng.randint(*spec["k"]) if spec.get("k") else None
        rows.append(code_problem(spec, k))
    return rows


def _code_warmup(sample, rng: random.Random) -> tuple[str, str]:
    row = sample(rng, 1, "train")[0]
    return row["prompt"], row["solution"]


def _file_tests(rows: list[dict], path: str) -> int:
    counts = {len(r["tests"]) if isinstance(r["tests"], list) else -1 for r in rows}
    if len(counts) != 1 or -1 in counts or 0 in counts:
        raise MoRLError(f"task option path={path!r}: column tests must be a non-empty list of assert strings "
                        f"with the same length in every row (the objective vector has fixed size); "
                        f"found lengths {sorted(counts)}")
    return counts.pop()


@register_task("code")
def code(path: str | None = None, per_test: bool = True, split: str = "train", columns: dict | None = None) -> Task:
    """Write a small Python function; scored by unit tests in the sandbox, one objective per test case."""
    if path:
        rows = load_rows(path, ["tests"], split, columns)
        num_tests = _file_tests(rows, path)
        sample = partial(_from_file, rows)
        warmup = partial(_code_warmup, sample) if all("solution" in r for r in rows) else None
    else:
        problems = _problems()
        num_tests = len(problems[0]["inputs"])
        sample = partial(_code_rows, problems)
        warmup = partial(_code_warmup, sample)
    tests = real_rewards.code_test_objectives(num_tests) if per_test else ["code_tests"]
    return Task(
        name="code",
        objectives=[*tests, "code_format"],
        weights=[0.8 / len(tests)] * len(tests) + [0.2],
        sample=sample,
        success_objective="code_tests",  # all tests pass; with per_test the loop scores it apart (not an objective)
        success_threshold=1.0,
        warmup=warmup,
        description="small Python functions: the reward vector is per unit-test case, plus code format",
        options={"path": path, "per_test": per_test},
    )


# ------------------------------------------------------------------------------------------------------ toolcall

def _tools() -> list[dict]:
    return json.loads((DATA / "tools.json").read_text(encoding="utf-8"))


def tool_request(tools: list[dict], rng: random.Random, distractors: int) -> dict:
    """One row: a request, the schemas of the right tool and some distractors, the expected name and args."""
    tool = rng.choice(tools)
    args = {p: rng.choice(vals) for p, vals in tool["values"].items()}
    shown = [tool, *rng.sample([t for t in tools if t is not tool], min(distractors, len(tools) - 1))]
    rng.shuffle(shown)
    schemas = "\n".join(json.dumps({"name": t["name"], "description": t["description"],
                                    "parameters": t["parameters"]}) for t in shown)
    prompt = TOOL_PROMPT.format(schemas=schemas, request=rng.choice(tool["requests"]).format(**args))
    return {"prompt": prompt, "tool": tool["name"], "args": json.dumps(args, sort_keys=True)}


def _tool_rows(tools: list[dict], distractors: int, rng: random.Random, n: int, split: str) -> list[dict]:
    return [tool_request(tools, rng, distractors) for _ in range(n)]


def _tool_warmup(sample, rng: random.Random) -> tuple[str, str]:
    row = sample(rng, 1, "train")[0]
    return row["prompt"], json.dumps({"name": row["tool"], "arguments": json.loads(row["args"])})


@register_task("toolcall")
def toolcall(path: str | None = None, distractors: int = 2, split: str = "train",
             columns: dict | None = None) -> Task:
    """Pick the right tool and fill its arguments from a request; answer with one JSON object."""
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
        raise MoRLError(f"task option distractors={distractors!r}: must be a non-negative integer")
    if path:
        rows = [{**r, "args": r["args"] if isinstance(r["args"], str) else json.dumps(r["args"], sort_keys=True)}
                for r in load_rows(path, ["tool", "args"], split, columns)]
        sample = partial(_from_file, rows)
    else:
        sample = partial(_tool_rows, _tools(), distractors)
    return Task(
        name="toolcall",
        objectives=["tool_json", "tool_name", "tool_args"],
        weights=[0.2, 0.3, 0.5],
        sample=sample,
        success_objective="tool_args",
        success_threshold=1.0,
        warmup=partial(_tool_warmup, sample),
        description="function calling: valid JSON vs the right tool vs the right arguments",
        options={"path": path, "distractors": distractors},
    )
