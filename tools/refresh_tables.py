"""Regenerates the results tables of a Markdown page from the commands the page gives.

    python tools/refresh_tables.py README.md

Each `...tools/results_table.py ...` or `...tools/prior_table.py ...` command in backticks
is run (with bash, from the repository root), and the first results table after it (the
block of lines starting '| run |') is replaced by what the command prints. The page is rewritten only if
every command succeeds.
"""
import os
import re
import subprocess
import sys

COMMAND = re.compile(r'`([^`\n]*tools/(?:results|prior)_table\.py[^`\n]*)`')  # In a line.
HEADER = '| run |'


def refresh(text: str, root: str) -> str:
  """`text` with the table after each results_table.py command replaced by its output."""
  position, pieces = 0, []
  for match in COMMAND.finditer(text):
    if match.start() < position:  # A command inside a table already replaced.
      continue
    start = text.find(HEADER, match.end())
    if start < 0:
      raise ValueError(f'no results table ({HEADER} ...) follows {match.group(1)!r}')
    end = text.find('\n\n', start)
    end = len(text) if end < 0 else end
    table = subprocess.run(['bash', '-c', match.group(1)], cwd=root, check=True,
                           capture_output=True, text=True).stdout.strip()
    if not table.startswith(HEADER):
      raise ValueError(f'{match.group(1)!r} printed no results table')
    pieces += [text[position:start], table]
    position = end
  return ''.join(pieces) + text[position:]


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(argv[1], encoding='utf-8') as f:
    text = f.read()
  try:
    new = refresh(text, root)
  except subprocess.CalledProcessError as e:
    print(f'refresh_tables: {e.cmd[-1]!r} failed:\n{e.stderr}', file=sys.stderr)
    return 1
  except ValueError as e:
    print(f'refresh_tables: {argv[1]}: {e}', file=sys.stderr)
    return 1
  with open(argv[1], 'w', encoding='utf-8') as f:
    f.write(new)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
