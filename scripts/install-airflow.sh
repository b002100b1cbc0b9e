#!/usr/bin/env bash
# Install Apache Airflow from PyPI into a virtualenv of its own (Airflow's environment needs no modelmill:
# an exported DAG calls the `modelmill` command by its absolute path). Idempotent: exits at once when the
# pinned version is already there. The venv lives in MODELMILL_AIRFLOW_VENV (default
# ~/.cache/modelmill/airflow-venv); tests/training/test_airflow.py uses it.
set -eu
VERSION="${MODELMILL_AIRFLOW_VERSION:-2.10.5}"
VENV="${MODELMILL_AIRFLOW_VENV:-$HOME/.cache/modelmill/airflow-venv}"
PY="${MODELMILL_AIRFLOW_PYTHON:-python3}"
if [ -x "$VENV/bin/airflow" ] && [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-airflow"))' 2>/dev/null)" = "$VERSION" ]; then
  echo "airflow: $VERSION in $VENV"; exit 0
fi
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# Airflow publishes its tested pins on GitHub, which CI cannot reach; these few pins (from Airflow's own
# constraints-2.10.5 for Python 3.11) keep pip's resolver off releases that break Airflow 2.10.
"$VENV/bin/pip" install -q --disable-pip-version-check "apache-airflow==$VERSION" \
  "flask-session<0.6" "connexion<3" "pendulum<4" "marshmallow<4"
"$VENV/bin/airflow" version
