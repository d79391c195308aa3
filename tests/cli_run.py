"""Run the revtrain command in-process, as the command-line tests do."""
from revtrain.cli import main


def run(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``revtrain argv`` (captured by pytest's ``capsys``)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
