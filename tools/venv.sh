# Sourced by bqemulator.sh and validators.sh: what both need to (re)create their virtualenv.

# Replaces the virtualenv at $1 with a new, empty one (an install cut short is redone from
# scratch). Refuses a directory that is not a virtualenv rather than delete it.
new_venv() {
  if [ -e "$1" ]; then
    [ -f "$1/pyvenv.cfg" ] || { echo "$1 exists and is no virtualenv" >&2; return 1; }
    rm -rf "$1"
  fi
  python3 -m venv "$1"
}
