"""nbdkit's messages as log lines: a plugin's refusal of a client's mistake is one warning line,
a bug keeps its traceback."""

from controller.nbd.nbdkit_log import Collapser

REFUSAL = """\
nbdkit: python[2]: error: /srv/tzero/nbdplugin/plugin.py: open: error: Traceback (most recent call last):
   File "/srv/tzero/nbdplugin/plugin.py", line 131, in open
    _fail(errno.ENOENT, f"no export named {name!r}")
   File "/srv/tzero/nbdplugin/plugin.py", line 66, in _fail
    raise OSError(err, message)
 FileNotFoundError: [Errno 2] no export named 'nope'

"""

BUG = """\
nbdkit: python[3]: error: /srv/tzero/nbdplugin/plugin.py: pread: error: Traceback (most recent call last):
   File "/srv/tzero/nbdplugin/plugin.py", line 160, in pread
    h.session.read_view(h.export, buf, offset)
 KeyError: 'a'
"""


def collapse(text, verbose=False):
    said = []
    c = Collapser(lambda level, message: said.append((level, message)), verbose)
    for line in text.splitlines(keepends=True):
        c.feed(line)
    c.close()
    return said


def test_nbdkit_log_a_refused_request_is_one_warning_line():
    assert collapse(REFUSAL) == [("warning", "nbdkit: python[2]: open: no export named 'nope'")]


def test_nbdkit_log_a_bug_keeps_its_traceback_at_error_level():
    said = collapse(BUG)
    assert len(said) == 4 and {level for level, _ in said} == {"error"} and "KeyError: 'a'" in said[-1][1]


def test_nbdkit_log_verbose_keeps_every_traceback():
    assert len(collapse(REFUSAL, verbose=True)) == 6


def test_nbdkit_log_other_lines_pass_with_their_level():
    said = collapse("nbdkit: debug: python: load\nnbdkit: error: cannot open file\nplain words\n\n")
    assert said == [("debug", "nbdkit: debug: python: load"), ("error", "nbdkit: error: cannot open file"),
                    ("info", "plain words")]


def test_nbdkit_log_a_traceback_cut_short_is_passed_on_whole():
    said = collapse("\n".join(BUG.splitlines()[:2]))
    assert [level for level, _ in said] == ["error", "error"]


def test_nbdkit_log_the_plugins_own_warnings_are_warnings_said_once():
    said = collapse("tzero-plugin: warning: control connection from 10.0.0.9:4711 refused: TLS: unknown ca\n"
                    "tzero-plugin: session 5267f07e opened on a\n")
    assert said == [("warning", "tzero-plugin: control connection from 10.0.0.9:4711 refused: TLS: unknown ca"),
                    ("info", "tzero-plugin: session 5267f07e opened on a")]
