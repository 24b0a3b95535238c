"""Command lines: every entry point parses absl flags, through the helpers here.

An entry point is a `Command`: a function that defines its flags on a `flags.FlagValues`, and a
body that runs on the parsed values. `Command.run()` is `python -m ...`: the flags go into absl's
global `FLAGS` and `absl.app.run` parses them (absl's `--help` / `--helpfull`, its errors, its
logging). Calling the command with an argv list runs the same parse on a fresh `FlagValues`, so a
test or another module can call it in-process, any number of times, whatever else defined flags.

The argparse spellings these commands accepted before they moved to absl keep working (the
command lines in the README, docs and experiments are a contract): `--max-bytes` for `--max_bytes`,
`--no-torch` for `--notorch`, `--methods auto dense` for `--methods=auto --methods=dense` (a
`DEFINE_multi_*` flag), `-h` for `--help`. argparse's abbreviated flag names are not accepted.
`--help` exits 0 (absl's own help flags exit 1), as it did under argparse.

A user's mistake (`config_validation.UserError`, raised by every check of a setting or path) is
printed as one line on stderr, `PROG: error: MESSAGE`, with where a named `config.KEY` got its
value (the command line, the config file's variant, the config file, the default), and exits 1
without a traceback (`reporting_user_errors`).
"""

import contextlib
import dataclasses
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags

from barlow_jax.config_validation import UserError

_HELP = ("--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull", "-?")


def argparse_spellings(argv: Sequence[str], flag_values: flags.FlagValues) -> list[str]:
  """`argv` (program name first) with argparse's spellings of `flag_values`' flags made absl's.

  Only tokens before a lone `--` are rewritten, and only where they name a defined flag:
  `--a-b[=v]` -> `--a_b[=v]`; `--no-x` -> `--nox` for a boolean `x`; `--m v1 v2` -> `--m=v1
  --m=v2` for a multi flag `m` (the values are the tokens up to the next one starting with `-`);
  `-h` -> `--help`.
  """
  out, tokens = list(argv[:1]), list(argv[1:])
  i = 0
  while i < len(tokens):
    token = tokens[i]
    i += 1
    if token == "--":
      out += tokens[i - 1 :]
      break
    if token == "-h" and "h" not in flag_values:
      out.append("--help")
      continue
    if not token.startswith("--"):
      out.append(token)
      continue
    name, eq, value = token[2:].partition("=")
    if name not in flag_values and name.replace("-", "_") in flag_values:
      name = name.replace("-", "_")
    negated = name.replace("-", "_")[3:] if name.startswith("no-") else ""
    if name not in flag_values and negated in flag_values and flag_values[negated].boolean:
      name = "no" + negated
    flag = flag_values[name] if name in flag_values else None
    if isinstance(flag, flags.MultiFlag) and not eq:
      values = []
      while i < len(tokens) and not tokens[i].startswith("-"):
        values.append(tokens[i])
        i += 1
      out += [f"--{name}={v}" for v in values] or [f"--{name}"]
      continue
    out.append(f"--{name}{eq}{value}")
  return out


def given_flags(flag_values: flags.FlagValues) -> list[str]:
  """The flags set on the parsed command line, as `--name=value` tokens (sorted by name): what
  a child process needs to run the same command."""
  out = []
  for name in sorted(set(flag_values)):
    flag = flag_values[name]
    if flag.present and name == flag.name:
      out += flag.serialize().splitlines()
  return out


def _asks_help(argv: Sequence[str]) -> bool:
  own = argv[: argv.index("--")] if "--" in argv else argv
  return any(token.split("=")[0] in _HELP for token in own[1:])


def _fail(message: str) -> NoReturn:
  """absl's report of a bad flag (`parse_flags_with_usage`): stderr, exit status 1."""
  sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
  raise SystemExit(1)


def without_traceback(message: str) -> str:
  """`message` without the Python traceback ml_collections puts inside a config file's error:
  its first line (which flag) and the exception's last line (what went wrong)."""
  lines = [line for line in message.splitlines() if line.strip()]
  if not any(line.startswith("Traceback") for line in lines):
    return message
  return f"{lines[0].rstrip(':')} {lines[-1]}"


def loaded_config(flag_values: flags.FlagValues, name: str = "config"):
  """The config of the `--NAME` config-file flag.

  ml_collections reports a config file that could not be loaded (a missing path) when the value
  is first read; this turns that into a `UserError` naming the flag, printed as one line.
  """
  try:
    config = getattr(flag_values, name)
    config.to_dict()  # ml_collections' stand-in for a file that did not load raises here.
    return config
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raise UserError(f"--{name}: the config file could not be loaded: {lines[-1]}") from None


def _parse(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
  # ml_collections' config flags find their `--config.KEY` overrides in sys.argv when they
  # parse: an in-process parse shows them the argv it parses.
  saved, sys.argv = sys.argv, list(argv)
  try:
    return flag_values(argv)
  except flags.Error as e:
    _fail(without_traceback(str(e)))
  except (AttributeError, KeyError) as e:
    # ml_collections' config_flags raise these from inside the parse for a `--config.KEY=V`
    # whose KEY the config lacks: report it as the flag error it is, not as a traceback.
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    detail = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    missing = detail.split("\n")[0].strip("'\"")
    named = [t.split("=")[0] for t in argv if t.startswith("--") and f".{missing}" in t]
    where = named[0] if named else "a --config.KEY override"
    _fail(f"{where}: the config has no key {detail}")
  finally:
    sys.argv = saved


def parse_flags(argv: Sequence[str]) -> list[str]:
  """The `flags_parser` of `absl.app.run` for every entry point: argparse spellings of the global
  flags accepted, absl's message on a bad flag (a misspelt `--config.KEY` too; exit 1), `--help`
  exits 0."""
  argv = argparse_spellings(argv, flags.FLAGS)
  try:
    return _parse(flags.FLAGS, argv)
  except SystemExit as e:
    if e.code == 1 and _asks_help(argv):
      raise SystemExit(0) from None
    raise


def _lookup(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _config_file_value(filename: str, arg: str | None, dotted: str) -> Any:
  """`dotted` of `get_config(arg)` of the config file `filename` (loaded afresh)."""
  spec = importlib.util.spec_from_file_location("_barlow_jax_config_origin", filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  takes_arg = bool(inspect.signature(module.get_config).parameters)
  config = module.get_config(arg) if takes_arg else module.get_config()
  return _lookup(config, dotted)


def config_origin(key: str, argv: Sequence[str]) -> str:
  """Where `config.<key>` got its value in the command line `argv`: "" when unknown.

  "set on the command line", "set by the variant ':runlocal' of configs/x.py (-1 = ...)",
  "set by configs/x.py", or "the default of configs/x.py".
  """
  prefix = f"--config.{key}"
  if any(t == prefix or t.startswith(prefix + "=") for t in argv):
    return f"set on the command line ({prefix}=...)"
  spec = next((t.split("=", 1)[1] for t in argv if t.startswith("--config=")), None)
  if spec is None:
    i = next((i for i, t in enumerate(argv) if t == "--config"), None)
    spec = argv[i + 1] if i is not None and i + 1 < len(argv) else None
  if not spec:
    return ""
  filename, _, arg = spec.partition(":")
  try:
    value = _config_file_value(filename, arg or None, key)
    plain = _config_file_value(filename, None, key) if arg else value
    from barlow_jax import config as config_lib

    default = _lookup(config_lib.base_config(), key)
  except Exception:  # An origin is a courtesy: never let it hide the error itself.
    return ""
  if arg and value != plain:
    return f"set by the variant ':{arg}' of {filename}"
  if value != default:
    return f"set by {filename}"
  return f"the default, kept by {filename}"


def user_error_text(prog: str, error: UserError, argv: Sequence[str] = ()) -> str:
  """The line printed for `error`: `PROG: error: MESSAGE` plus where the first named
  `config.KEY` got its value (`config_origin`)."""
  text = str(error)
  match = re.search(r"config\.([A-Za-z_][\w.]*[A-Za-z0-9_])", text)
  if match and argv:
    origin = config_origin(match.group(1), argv)
    if origin:
      text += f" [config.{match.group(1)}: {origin}]"
  return f"{prog}: error: {text}\n"


@contextlib.contextmanager
def reporting_user_errors(prog: str, argv: Sequence[str] = ()):
  """A `UserError` inside becomes its one-line message on stderr and SystemExit(1)."""
  try:
    yield
  except UserError as e:
    sys.stderr.write(user_error_text(prog, e, argv))
    sys.stderr.flush()
    raise SystemExit(1) from None


@dataclasses.dataclass(frozen=True)
class Command:
  """One entry point: its flags and what it runs.

  Attributes:
    prog: how it is invoked (`python -m barlow_jax.convert`), for messages.
    define: defines the flags on the `flags.FlagValues` it is given (the same definitions serve
      the command line and in-process calls).
    body: `body(flag_values, argv) -> exit status (None: 0)`, `argv` being what absl leaves: the
      program name, then the positional arguments (and everything after `--`).
    doc: the text `--help` prints above the flags (the module docstring).
  """

  prog: str
  define: Callable[[flags.FlagValues], None]
  body: Callable[[flags.FlagValues, list[str]], int | None]
  doc: str | None = None

  def parse(self, argv: Sequence[str]) -> tuple[flags.FlagValues, list[str]]:
    """`argv` (program name first; it is not read) parsed on a fresh `FlagValues` holding this
    command's flags: `(flag_values, what absl leaves)`.

    A bad flag prints absl's message to stderr and raises SystemExit(1), as on the command line.
    """
    flag_values = flags.FlagValues()
    self.define(flag_values)
    return flag_values, _parse(flag_values, argparse_spellings([self.prog, *argv[1:]], flag_values))

  def __call__(self, argv: Sequence[str]) -> int:
    """Runs the command in-process on `argv` (program name first; it is not read) and returns
    its exit status. A bad flag, a `UsageError` or a `UserError` of the body prints the message
    to stderr and raises SystemExit(1), as on the command line.
    """
    flag_values, rest = self.parse(argv)
    try:
      with reporting_user_errors(self.prog, list(argv)):
        return self.body(flag_values, rest) or 0
    except app.UsageError as e:
      sys.stderr.write(f"{self.prog}: {e}\n")
      raise SystemExit(e.exitcode) from None

  def run(self, argv: Sequence[str] | None = None) -> None:
    """`python -m ...`: `absl.app.run` on `argv` (default `sys.argv`); exits with the status."""
    main_module = sys.modules["__main__"]
    before = set(flags.FLAGS)
    self.define(flags.FLAGS)
    # `--help` lists the main module's key flags: the ones this command defined (some come from
    # shared helper modules) and prints __main__'s docstring (a dispatcher runs another's).
    for name in set(flags.FLAGS) - before:
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    if self.doc:
      main_module.__doc__ = self.doc
    given = list(sys.argv if argv is None else argv)

    def body(rest):
      with reporting_user_errors(self.prog, given):
        return self.body(flags.FLAGS, rest) or 0

    app.run(body, argv=argv, flags_parser=parse_flags)
