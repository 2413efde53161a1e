"""DESIGN principle 3: the scheduler and policies never read the oracle's output length."""

from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sluice"


def test_only_the_oracle_reads_true_output():
    allowed = {"executors/simulated.py", "sim/fastforward.py", "core/request.py",
               "policies/predictors.py"}
    offenders = []
    for path in list((SRC / "core").glob("*.py")) + list((SRC / "policies").glob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel not in allowed and "true_output" in path.read_text():
            offenders.append(rel)
    assert offenders == []


def test_the_oracle_predictor_is_named_oracle():
    text = (SRC / "policies" / "predictors.py")
    if text.exists():
        body = text.read_text()
        for line in body.splitlines():
            if "true_output" in line and not line.lstrip().startswith(("#", '"', "'")):
                assert "oracle" in body[: body.index(line)].rsplit("class ", 1)[-1].lower() \
                    or "oracle" in line.lower()
