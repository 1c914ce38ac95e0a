#!/usr/bin/env python3
"""Generate the bundled sample data (datasets/sample/) deterministically: stdlib only, fixed seed.

    python datasets/generate_sample.py                 # rewrite datasets/sample/ in place
    python datasets/generate_sample.py --out /tmp/x    # write the same bytes elsewhere

Every problem is produced by a template with small numbers, so that a tiny random LLaMA trained for
a few minutes on a CPU can learn the answer format and part of the arithmetic. Responses are short
(a line of working, then the answer in \\boxed{}; the answer alone for the evaluator's answer-only
prompt), because the scorer extracts boxed answers and evaluation generates only 32-64 tokens. The
eval problems come from the same templates with numbers held out of the training files (their
problem texts never occur in tuning/ or preference/). datasets/README.md explains the design.

Nothing is copied from anywhere: all text is written by the templates below. Licence: Apache-2.0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

SEED = 20260105

# The official kit's fixed system sentence; most lines use it so that training matches inference.
DEFAULT_SYSTEM = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
OTHER_SYSTEMS = [
    "あなたは数学の先生です。途中式を短く示し、最終的な答えを \\boxed{} で囲んで答えてください。",
    "あなたは日本の中学・高校数学を教える親切なアシスタントです。",
    "次の数学の問題に答えてください。答えは \\boxed{} の中に書きます。",
]
FOLLOW_UP_PREFIXES = ["続けて、次の問題です。", "もう一問お願いします。", "では、これはどうですか。"]

# The evaluation prompt styles (tunekit.evaluate.prompts, kept equal by tests/test_sample_data.py):
# the evaluator wraps each eval problem in one of these, without a system message. Training lines
# use the same wrappers so that a tiny model sees at evaluation the prompt it was trained on.
# "official" asks for the answer only (the submission generates few tokens), so its replies are
# just `$\boxed{N}$`; "cot_boxed" asks for working, then one \boxed{}.
PROMPT_WRAPPERS = {
    "official": (
        "以下は数学の問題です。\n"
        "問題に対する解答のみを出力してください。\n"
        "推論過程は出力しないでください。\n"
        "\n"
        "# 問題\n"
        "{question}\n"
        "\n"
        "# 解答\n"
    ),
    "cot_boxed": (
        "以下は数学の問題です。\n"
        "順を追って考え、途中の計算も書いてください。\n"
        "最後に、最終的な答えだけを \\boxed{{}} の中に一度だけ書いてください。\n"
        "\n"
        "# 問題\n"
        "{question}\n"
        "\n"
        "# 解答\n"
    ),
}


@dataclass
class Problem:
    """One templated problem with its exact answer and a plausible wrong answer (for DPO)."""

    template: str
    problem: str          # the user message / eval `problem`
    work: str             # one short line of working shown before the answer
    answer: str           # LaTeX put inside \boxed{}
    wrong: str            # a wrong answer, LaTeX, != answer
    category: str         # 中1 中2 中3 IA IIB IIIC
    unit: str
    difficulty: int       # 1 easy (copy-like) .. 3 harder
    method: str | None = None  # eval `evaluation_method` when not the default (soft)

    def __post_init__(self):
        # A "wrong" answer equal to the right one would teach DPO nothing (or the opposite).
        assert self.wrong != self.answer, (self.template, self.problem)

    def response(self, answer: str | None = None, style: str = "bare") -> str:
        """The assistant's reply with `answer` (default: the correct one) for a prompt `style`.

        "official" gets the answer only; "bare" and "cot_boxed" get the work line, then \\boxed{}.
        """
        ans = self.answer if answer is None else answer
        if style == "official":
            return f"$\\boxed{{{ans}}}$"
        return f"{self.work}{ans}\nよって、答えは $\\boxed{{{ans}}}$ です。"

    def user(self, style: str = "bare") -> str:
        """The user message: the bare problem, or the problem inside an evaluation prompt wrapper."""
        return self.problem if style == "bare" else PROMPT_WRAPPERS[style].format(question=self.problem)

    def gold(self) -> str | list[str]:
        """The eval `solution`: plain integers stay plain, LaTeX goes inside $$...$$ like the real data."""
        if _is_int(self.answer):
            # Some golds list alternatives (any may match), as the competition format allows.
            return [self.answer, f"$${self.answer}$$"] if self.template in _LIST_GOLD else self.answer
        return f"$${self.answer}$$"


_LIST_GOLD = {"angle_sum", "percent"}


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def _near(r: random.Random, value: int, avoid: int | None = None) -> int:
    """A wrong integer close to `value` (off by 1-3, or the sign flipped), never equal to it."""
    choices = [value + d for d in (-3, -2, -1, 1, 2, 3)]
    if value != 0:
        choices.append(-value)
    choices = [c for c in choices if c != value and c != avoid]
    return r.choice(choices)


def _paren(n: int) -> str:
    """Negative operands in parentheses, as Japanese textbooks write them."""
    return f"({n})" if n < 0 else str(n)


def _frac(q: Fraction) -> str:
    """A reduced fraction as LaTeX (integers stay integers)."""
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


# --------------------------------------------------------------------------------------------
# Templates. Each takes a Random and returns a Problem. Numbers are kept small on purpose.
# --------------------------------------------------------------------------------------------

def t_add_signed(r):
    a, b = -r.randint(1, 9), r.randint(1, 9)
    v = a + b
    return Problem("add_signed", f"次の計算をしなさい。\n{_paren(a)} + {b}", f"{_paren(a)} + {b} = ",
                   str(v), str(_near(r, v)), "中1", "正負の数", 1)


def t_sub_signed(r):
    a, b = r.randint(1, 9), r.randint(1, 9)
    v = a - b
    return Problem("sub_signed", f"次の計算をしなさい。\n{a} - {b}", f"{a} - {b} = ",
                   str(v), str(_near(r, v)), "中1", "正負の数", 1)


def t_mul_signed(r):
    a, b = -r.randint(2, 9), r.randint(2, 9)
    v = a * b
    return Problem("mul_signed", f"次の計算をしなさい。\n{_paren(a)} × {b}", f"{_paren(a)} × {b} = ",
                   str(v), str(-v), "中1", "正負の数", 2)


def t_abs(r):
    a = r.randint(1, 99)
    return Problem("abs", f"{-a} の絶対値を答えなさい。", f"|{-a}| = ", str(a), str(-a), "中1", "正負の数", 1)


def t_linear_add(r):
    a, x = r.randint(1, 9), r.randint(1, 9)
    b = x + a
    return Problem("linear_add", f"方程式 x + {a} = {b} を解きなさい。", f"x = {b} - {a} = ",
                   str(x), str(b + a), "中1", "一次方程式", 1)


def t_linear_mul(r):
    a, x = r.randint(2, 9), r.randint(1, 9)
    b = a * x
    return Problem("linear_mul", f"方程式 {a}x = {b} を解きなさい。", f"x = {b} ÷ {a} = ",
                   str(x), str(_near(r, x)), "中1", "一次方程式", 2)


def t_expr_value(r):
    x, a, b = r.randint(1, 5), r.randint(2, 5), r.randint(1, 9)
    v = a * x + b
    return Problem("expr_value", f"x = {x} のとき、{a}x + {b} の値を求めなさい。",
                   f"{a} × {x} + {b} = ", str(v), str(_near(r, v)), "中1", "文字式", 2)


def t_frac_add(r):
    a, b = r.sample(range(2, 7), 2)
    q = Fraction(1, a) + Fraction(1, b)
    wrong = _frac(Fraction(2, a + b))  # the classic mistake: add numerators and denominators
    return Problem("frac_add", f"次の計算をしなさい。\n$\\frac{{1}}{{{a}}} + \\frac{{1}}{{{b}}}$",
                   f"\\frac{{{b}}}{{{a * b}}} + \\frac{{{a}}}{{{a * b}}} = ", _frac(q), wrong,
                   "中1", "分数の計算", 3)


def t_percent(r):
    p = r.choice([10, 20, 25, 50])
    n = r.randint(1, 9) * {10: 10, 20: 5, 25: 4, 50: 2}[p]
    v = n * p // 100
    return Problem("percent", f"{n} の {p}% はいくつですか。", f"{n} × {p} ÷ 100 = ",
                   str(v), str(_near(r, v)), "中1", "割合", 2)


def t_simul_x(r):
    x, y = r.randint(2, 9), r.randint(1, 9)
    if y >= x:
        x, y = y + 1, x
    s, d = x + y, x - y
    return Problem("simul_x", f"連立方程式 x + y = {s}, x - y = {d} を解き、x の値を求めなさい。",
                   f"2x = {s} + {d} = {s + d} より x = ", str(x), str(y), "中2", "連立方程式", 2)


def t_linear_func(r):
    a, b, x = r.randint(1, 5), r.randint(1, 9), r.randint(1, 5)
    v = a * x + b
    return Problem("linear_func", f"一次関数 y = {a}x + {b} について、x = {x} のときの y の値を求めなさい。",
                   f"y = {a} × {x} + {b} = ", str(v), str(_near(r, v)), "中2", "一次関数", 2)


def t_slope(r):
    a, b = r.randint(2, 20), r.randint(1, 20)
    return Problem("slope", f"一次関数 y = {a}x + {b} のグラフの傾きを答えなさい。", f"y = {a}x + {b} の傾きは ",
                   str(a), str(b if b != a else a + 1), "中2", "一次関数", 1)


def t_angle_sum(r):
    n = r.randint(3, 20)
    v = 180 * (n - 2)
    return Problem("angle_sum", f"{n}角形の内角の和は何度ですか。", f"180 × ({n} - 2) = ",
                   str(v), str(180 * n), "中2", "図形の性質", 2)


def t_sqrt(r):
    a = r.randint(2, 15)
    return Problem("sqrt", f"$\\sqrt{{{a * a}}}$ を簡単にしなさい。", f"\\sqrt{{{a * a}}} = \\sqrt{{{a}^2}} = ",
                   str(a), str(a * a), "中3", "平方根", 1)


def t_root_square(r):
    a = r.choice([n for n in range(2, 40) if int(n ** 0.5) ** 2 != n])
    return Problem("root_square", f"$(\\sqrt{{{a}}})^2$ を計算しなさい。", f"(\\sqrt{{{a}}})^2 = ",
                   str(a), str(2 * a), "中3", "平方根", 1)


def t_square(r):
    a = r.randint(2, 12)
    return Problem("square", f"次の計算をしなさい。\n$(-{a})^2$", f"(-{a}) × (-{a}) = ",
                   str(a * a), str(-a * a), "中3", "式の計算", 2)


def t_expand(r):
    a, sign = r.randint(1, 12), r.choice("+-")
    ans = f"x^2 {sign} {2 * a}x + {a * a}"
    wrong = f"x^2 + {a * a}"  # the classic mistake: forgetting the middle term
    return Problem("expand", f"$(x {sign} {a})^2$ を展開しなさい。",
                   f"(x {sign} {a})^2 = x^2 {sign} 2 × {a} × x + {a}^2 = ", ans, wrong, "中3", "式の展開", 3)


def t_quad_root(r):
    a = r.randint(2, 12)
    return Problem("quad_root", f"二次方程式 $x^2 = {a * a}$ の正の解を求めなさい。", f"x = \\pm {a} のうち正の解は ",
                   str(a), str(-a), "中3", "二次方程式", 2)


def t_perm(r):
    n = r.randint(3, 12)
    return Problem("perm", f"{n} 人の中から 2 人を選んで 1 列に並べる方法は何通りですか。", f"{n} × {n - 1} = ",
                   str(n * (n - 1)), str(n * (n - 1) // 2), "IA", "場合の数", 2)


def t_comb(r):
    n = r.randint(3, 12)
    return Problem("comb", f"$_{{{n}}}\\mathrm{{C}}_{{2}}$ の値を求めなさい。", f"\\frac{{{n} × {n - 1}}}{{2}} = ",
                   str(n * (n - 1) // 2), str(n * (n - 1)), "IA", "場合の数", 2)


def t_comb1(r):
    n = r.randint(2, 40)
    return Problem("comb1", f"$_{{{n}}}\\mathrm{{C}}_{{1}}$ の値を求めなさい。", f"_{{{n}}}\\mathrm{{C}}_{{1}} = ",
                   str(n), "1", "IA", "場合の数", 1)


def t_balls(r):
    a, b = r.randint(1, 6), r.randint(1, 6)
    q = Fraction(a, a + b)
    return Problem("balls", f"袋の中に赤玉が {a} 個、白玉が {b} 個入っている。1 個取り出すとき、赤玉である確率を求めなさい。",
                   f"\\frac{{{a}}}{{{a} + {b}}} = ", _frac(q), _frac(Fraction(a, b)), "IA", "確率", 3)


def t_gcd(r):
    g = r.randint(2, 9)
    a, b = r.sample(range(1, 8), 2)
    while math.gcd(a, b) != 1:
        a, b = r.sample(range(1, 8), 2)
    return Problem("gcd", f"{g * a} と {g * b} の最大公約数を求めなさい。", f"{g * a} = {g} × {a}, {g * b} = {g} × {b} より ",
                   str(g), str(g * a * b), "IA", "整数の性質", 2)


def t_arith_seq(r):
    a, d, n = r.randint(1, 9), r.randint(1, 5), r.randint(2, 6)
    v = a + (n - 1) * d
    return Problem("arith_seq", f"初項 {a}、公差 {d} の等差数列の第 {n} 項を求めなさい。",
                   f"{a} + ({n} - 1) × {d} = ", str(v), str(a + n * d), "IIB", "数列", 2)


def t_deriv(r):
    a, b = r.randint(1, 9), r.randint(1, 5)
    v = 2 * b + a
    return Problem("deriv", f"f(x) = x^2 + {a}x のとき、f'({b}) の値を求めなさい。",
                   f"f'(x) = 2x + {a} より f'({b}) = 2 × {b} + {a} = ", str(v), str(b * b + a * b),
                   "IIB", "微分法", 2)


def t_deriv_linear(r):
    a, b = r.randint(2, 30), r.randint(1, 9)
    return Problem("deriv_linear", f"f(x) = {a}x + {b} のとき、f'(x) を求めなさい。", f"f'(x) = ",
                   str(a), str(b if b != a else a + 1), "IIB", "微分法", 1)


def t_log(r):
    base = r.choice([2, 3, 10])
    k = r.randint(1, {2: 6, 3: 4, 10: 4}[base])
    return Problem("log", f"$\\log_{{{base}}} {base ** k}$ の値を求めなさい。", f"{base ** k} = {base}^{{{k}}} より ",
                   str(k), str(k + 1), "IIB", "指数・対数関数", 2)


def t_complex_add(r):
    a, b, c, d = (r.randint(1, 5) for _ in range(4))
    ans = f"{a + c} + {b + d}i"
    wrong = f"{a + c} + {b * d}i"
    if b + d == b * d:
        wrong = f"{a + c} - {b + d}i"
    return Problem("complex_add", f"$({a} + {b}i) + ({c} + {d}i)$ を計算しなさい。",
                   f"({a} + {c}) + ({b} + {d})i = ", ans, wrong, "IIIC", "複素数平面", 2, "complex")


def t_imag_part(r):
    a, b = r.randint(1, 30), r.randint(1, 30)
    return Problem("imag_part", f"複素数 {a} + {b}i の虚部を答えなさい。", f"{a} + {b}i の虚部は ",
                   str(b), str(a if a != b else b + 1), "IIIC", "複素数平面", 1)


def t_limit(r):
    a = r.randint(2, 20)
    return Problem("limit", f"$\\lim_{{x \\to 0}} \\frac{{\\sin {a}x}}{{x}}$ を求めなさい。",
                   f"\\lim_{{x \\to 0}} {a} × \\frac{{\\sin {a}x}}{{{a}x}} = ", str(a), "1", "IIIC", "極限", 1)


def t_integral(r):
    if r.random() < 0.6:
        a, f, F = r.randint(1, 12), "2x", "x^2"
        v = a * a
    else:
        a, f, F = r.randint(1, 5), "3x^2", "x^3"
        v = a ** 3
    return Problem("integral", f"$\\int_0^{{{a}}} {f} \\, dx$ を求めなさい。", f"[{F}]_0^{{{a}}} = ",
                   str(v), str(2 * v), "IIIC", "積分法", 2)


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    t_add_signed, t_sub_signed, t_mul_signed, t_abs, t_linear_add, t_linear_mul, t_expr_value,
    t_frac_add, t_percent, t_simul_x, t_linear_func, t_slope, t_angle_sum, t_sqrt, t_root_square,
    t_square, t_expand, t_quad_root, t_perm, t_comb, t_comb1, t_balls, t_gcd, t_arith_seq, t_deriv,
    t_deriv_linear, t_log, t_complex_add, t_imag_part, t_limit, t_integral,
]
# Templates whose answer is a number copied from the problem: a tiny model learns these first, so
# every category has one and training draws them more often (the eval still has them at their
# natural share). The other templates need arithmetic; a tiny model gets only some of them.
COPY_TEMPLATES = {t_abs, t_slope, t_root_square, t_comb1, t_deriv_linear, t_imag_part, t_limit}
TRAIN_WEIGHTS = [3 if t in COPY_TEMPLATES else 1 for t in TEMPLATES]
# Preference pairs lean harder on the copy templates: there the wrong answers are the ones a small
# model really gives (the other number of the problem, a digit lost or changed), so the pairs
# teach a choice it can learn; for the arithmetic templates a tiny model has little to choose from.
PREF_WEIGHTS = [6 if t in COPY_TEMPLATES else 1 for t in TEMPLATES]
CATEGORIES = ["中1", "中2", "中3", "IA", "IIB", "IIIC"]

# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

EVAL_PER_CATEGORY = 15      # 6 categories -> 90 eval problems
N_DRILL = 1200              # tuning/train/math_drill.jsonl
N_CHAT = 200                # tuning/train/math_chat.jsonl
N_PREF = 800                # preference/train/math_pref.jsonl
MAX_REDRAWS = 10_000        # a generator that cannot find a new line fails instead of looping


def make_eval_problems(r: random.Random) -> list[Problem]:
    """90 distinct eval problems, 15 per category, cycling through each category's templates."""
    by_cat = {c: [t for t in TEMPLATES if t(random.Random(0)).category == c] for c in CATEGORIES}
    problems, seen = [], set()
    for cat in CATEGORIES:
        i = 0
        while i < EVAL_PER_CATEGORY:
            p = by_cat[cat][i % len(by_cat[cat])](r)
            if p.problem in seen:
                continue  # redraw until each eval problem is distinct
            seen.add(p.problem)
            problems.append(p)
            i += 1
    return problems


def eval_row(n: int, p: Problem) -> dict:
    """The competition gold line of eval problem number `n` (1-based)."""
    row = {"id": f"sample-{n:03d}", "problem": p.problem, "solution": p.gold(),
           "category": p.category, "unit": p.unit, "difficulty": p.difficulty}
    if p.method:
        row["evaluation_method"] = p.method
    return row


def _draw(r: random.Random, held_out: set[str], weights: list[int] = TRAIN_WEIGHTS) -> Problem:
    """A training problem (template drawn by `weights`) whose text is not an eval problem."""
    while True:
        p = r.choices(TEMPLATES, weights=weights)[0](r)
        if p.problem not in held_out:
            return p


def _slip(r: random.Random, p: Problem) -> str:
    """A wrong answer of the kind a small model gives: the template's typical mistake, or (for an
    integer answer) the right number with a digit lost or changed, or off by a little."""
    if not _is_int(p.answer) or r.random() < 0.5:
        return p.wrong
    value = int(p.answer)
    digits, sign = str(abs(value)), -1 if value < 0 else 1
    options = {_near(r, value)}
    if len(digits) >= 2:
        i = r.randrange(len(digits))
        options.add(sign * int(digits[:i] + digits[i + 1:]))                       # a digit lost
        changed = str((int(digits[i]) + r.randint(1, 9)) % 10)
        options.add(sign * int(digits[:i] + changed + digits[i + 1:]))            # a digit changed
    options.discard(value)
    return str(r.choice(sorted(options)))


def _unique(make: Callable[[], dict], seen: set[str]) -> dict:
    """A row from `make()` that is not an exact copy of a row already in `seen` (then added).

    The templates' number ranges are small, so plain draws repeat lines (the kit's validator warns
    on exact duplicates: they are trained twice). A repeat is redrawn; a template whose lines are
    used up simply stops being picked, which shifts the template shares a little.
    """
    for _ in range(MAX_REDRAWS):
        row = make()
        key = json.dumps(row, ensure_ascii=False, sort_keys=True)
        if key not in seen:
            seen.add(key)
            return row
    raise RuntimeError(f"no new line after {MAX_REDRAWS} draws (make the file smaller or the templates wider)")


def _style(r: random.Random, weights: dict[str, int]) -> str:
    return r.choices(list(weights), weights=list(weights.values()))[0]


# Half of the single-turn lines use the evaluator's default ("official") wrapper.
DRILL_STYLES = {"official": 2, "bare": 1, "cot_boxed": 1}
# Preference pairs mostly in the prompt the evaluation sends (answer-only replies), so the pairs
# teach exactly the choice the scored answer makes; a quarter keep the worked reply.
PREF_STYLES = {"official": 3, "bare": 1}


def make_drill(r: random.Random, held_out: set[str], seen: set[str]) -> list[dict]:
    """Single-turn SFT lines with the official system sentence, in the three prompt styles; no
    line repeats one in `seen` (the SFT lines written so far)."""
    def one() -> dict:
        p, style = _draw(r, held_out), _style(r, DRILL_STYLES)
        return {"messages": [{"role": "system", "content": DEFAULT_SYSTEM},
                             {"role": "user", "content": p.user(style)},
                             {"role": "assistant", "content": p.response(style=style)}]}

    return [_unique(one, seen) for _ in range(N_DRILL)]


def make_chat(r: random.Random, held_out: set[str], seen: set[str]) -> list[dict]:
    """SFT lines with varied system prompts, half of them multi-turn (2-3 turns); no line repeats
    one in `seen` (the drill lines included).

    Every 50th line ends with an unanswered user turn: the official format allows it and says it
    is ignored, so the sample exercises that rule.
    """
    def one(i: int) -> dict:
        system = DEFAULT_SYSTEM if r.random() < 0.5 else r.choice(OTHER_SYSTEMS)
        turns = 1 if r.random() < 0.5 else r.randint(2, 3)
        msgs = [{"role": "system", "content": system}]
        for t in range(turns):
            p = _draw(r, held_out)
            user = p.problem if t == 0 else r.choice(FOLLOW_UP_PREFIXES) + "\n" + p.problem
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": p.response()}]
        if i % 50 == 49:
            msgs.append({"role": "user", "content": r.choice(FOLLOW_UP_PREFIXES) + "\n" + _draw(r, held_out).problem})
        return {"messages": msgs}

    return [_unique(lambda: one(i), seen) for i in range(N_CHAT)]


def make_pref(r: random.Random, held_out: set[str]) -> list[dict]:
    """DPO pairs: chosen = the correct response, rejected = the same shape with the template's
    typical wrong answer (for the copy templates: the other number of the problem, the mistake a
    small model makes); no pair repeats.

    Three in four use the "official" wrapper the evaluation sends (answer-only replies), the rest
    the bare problem with a worked reply. One line in ten carries an earlier answered turn
    (messages = system, user, assistant, user).
    """
    seen: set[str] = set()

    def one(i: int) -> dict:
        msgs = [{"role": "system", "content": DEFAULT_SYSTEM}]
        if i % 10 == 9:
            prev = _draw(r, held_out)
            msgs += [{"role": "user", "content": prev.problem}, {"role": "assistant", "content": prev.response()}]
        p, style = _draw(r, held_out, PREF_WEIGHTS), _style(r, PREF_STYLES)
        msgs.append({"role": "user", "content": p.user(style)})
        return {"messages": msgs, "chosen_response": p.response(style=style),
                "rejected_response": p.response(_slip(r, p), style=style)}

    return [_unique(lambda: one(i), seen) for i in range(N_PREF)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode("utf-8"))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def generate(out: Path, seed: int = SEED) -> dict[str, int]:
    """Write every sample file under `out` (the data_version folder); returns {relative path: lines}."""
    # Separate RNG streams per file so that changing one file's size leaves the others unchanged.
    eval_rows = [eval_row(n, p) for n, p in enumerate(make_eval_problems(random.Random(f"{seed}-eval")), 1)]
    held_out = {row["problem"] for row in eval_rows}
    sft_seen: set[str] = set()  # no SFT line twice, within or across the two SFT files
    files = {
        "tuning/train/math_drill.jsonl": make_drill(random.Random(f"{seed}-drill"), held_out, sft_seen),
        "tuning/train/math_chat.jsonl": make_chat(random.Random(f"{seed}-chat"), held_out, sft_seen),
        "preference/train/math_pref.jsonl": make_pref(random.Random(f"{seed}-pref"), held_out),
        "eval/dev.jsonl": eval_rows,
    }
    for rel, rows in files.items():
        _write_jsonl(out / rel, rows)
    return {rel: len(rows) for rel, rows in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "sample",
                    help="data_version folder to write (default: datasets/sample next to this script)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    for rel, n in generate(args.out, args.seed).items():
        print(f"{n:5d}  {args.out / rel}")


if __name__ == "__main__":
    main()
