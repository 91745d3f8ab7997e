#!/usr/bin/env bash
# Print the path of a Python interpreter >= 3.12, or fail with a clear message.
# Search order: $PYTHON if set, then python3.13/python3.12/python3 on PATH,
# then pyenv's versions folder (oldest usable first, to match the 3.12 container image).
set -euo pipefail

ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

candidates=()
[[ -n "${PYTHON:-}" ]] && candidates+=("$PYTHON")
for name in python3.12 python3.13 python3.14 python3 python; do
  if path=$(command -v "$name" 2>/dev/null); then candidates+=("$path"); fi
done
pyenv_root="${PYENV_ROOT:-}"
if [[ -z "$pyenv_root" ]] && command -v pyenv >/dev/null 2>&1; then
  pyenv_root=$(pyenv root 2>/dev/null || true)
fi
[[ -z "$pyenv_root" && -d "$HOME/.pyenv" ]] && pyenv_root="$HOME/.pyenv"
if [[ -n "$pyenv_root" && -d "$pyenv_root/versions" ]]; then
  while IFS= read -r dir; do
    candidates+=("$dir/bin/python3")
  done < <(ls -1d "$pyenv_root"/versions/3.* 2>/dev/null | sort -t. -k2,2n -k3,3n)
fi

for c in "${candidates[@]}"; do
  if [[ -x "$c" ]] && ok "$c"; then
    echo "$c"
    exit 0
  fi
done

echo "error: resonate-patterns needs Python >= 3.12 and none was found." >&2
echo "       looked at: \$PYTHON, python3.13/python3.12/python3 on PATH, and pyenv versions under '${pyenv_root:-~/.pyenv}'." >&2
echo "       install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
exit 1
