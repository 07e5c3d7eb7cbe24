"""benchmarks.local_llm_report: bad input is refused before the evaluator pool starts."""
from benchmarks.local_llm_report import main


def test_a_missing_run_file_is_one_line_and_exit_2(capsys):
    assert main(["--rescore", "--files", "no_such_run.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no such run file:") and "no_such_run.json" in err and "\n" not in err
