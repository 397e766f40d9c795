"""The LSTM app: preprocessing and metrics as the paper's code, local vs offloaded training, the thin client."""

from __future__ import annotations

import json
import re
import math
import textwrap

import numpy as np
import pandas as pd
import pytest

import storage_api
from storage_api import _context
from storage_api.errors import ObjectNotFound
from tests.conftest import run_python
from tests.test_stub import BLOCKER
from workflows.models import datasets, lstm
from workflows.models.trainer import LSTMTrainer

CLASS = "workflows.models.trainer.LSTMTrainer"


def ramp_csv(rows: int) -> str:
    """CPU = i, MEM = 100 + 2i: every scaled value can be written down by hand."""
    lines = ["timestamp,CPU,MEM"] + [f"2024-09-02 {i // 12:02d}:{i % 12 * 5:02d}:00,{i},{100 + 2 * i}" for i in range(rows)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ preprocessing
def test_paper_sizes_on_1989_rows():
    frame = datasets.generate(seed=1)
    assert list(frame.columns) == ["CPU", "MEM"] and len(frame) == 1989
    assert frame.index[0] == "2024-09-02 13:55:00" and frame.index[-1] == "2024-09-09 11:35:00"
    data = lstm.prepare(frame)
    assert data.x_train.shape == (1585, 6, 2) and data.y_train.shape == (1585, 2)
    assert data.x_test.shape == (392, 6, 2) and data.y_test.shape == (392, 2)
    assert data.x_train.dtype == np.float32
    # scaler fitted on the 1,591 training rows only
    assert data.scaler.data_min_ == pytest.approx(frame.iloc[:1591].min().to_numpy())
    assert data.scaler.data_max_ == pytest.approx(frame.iloc[:1591].max().to_numpy())


def test_windows_by_hand_on_a_tiny_csv():
    frame = datasets.parse_csv(ramp_csv(40))
    data = lstm.prepare(frame)
    # 32 training rows (int(40 * 0.8)) -> 26 windows; 8 test rows -> 2 windows
    assert data.x_train.shape == (26, 6, 2) and data.x_test.shape == (2, 6, 2)
    cpu = lambda i: i / 31  # noqa: E731  (train CPU spans 0..31)
    mem = lambda i: (100 + 2 * i - 100) / 62  # noqa: E731  (train MEM spans 100..162)
    np.testing.assert_allclose(data.x_train[0], [[cpu(i), mem(i)] for i in range(6)], rtol=1e-6)
    np.testing.assert_allclose(data.y_train[0], [cpu(6), mem(6)], rtol=1e-6)
    np.testing.assert_allclose(data.y_train[-1], [cpu(31), mem(31)], rtol=1e-6)
    # the test split is windowed on its own and scaled with the training scaler: beyond 1
    np.testing.assert_allclose(data.x_test[0, 0], [cpu(32), mem(32)], rtol=1e-6)
    np.testing.assert_allclose(data.y_test[-1], [cpu(39), mem(39)], rtol=1e-6)
    assert data.y_test.max() > 1


def test_windows_match_the_papers_shift_table():
    values = datasets.generate(seed=2).to_numpy()[:100]
    cols = [pd.DataFrame(values).shift(i) for i in range(6, 0, -1)] + [pd.DataFrame(values)]
    table = pd.concat(cols, axis=1).dropna().to_numpy()  # var1(t-6), var2(t-6), ..., var1(t), var2(t)
    x, y = lstm.windows(values, 6)
    np.testing.assert_array_equal(x, table[:, :-2].reshape(-1, 6, 2).astype(np.float32))
    np.testing.assert_array_equal(y, table[:, -2:].astype(np.float32))


# -------------------------------------------------------------------------------------- metrics
def test_metric_formulas_by_hand():
    m = lstm.metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 6.0]))
    assert m["mse"] == pytest.approx(1.5) and m["rmse"] == pytest.approx(math.sqrt(1.5))
    assert m["mae"] == 1.0
    assert m["smape"] == 30.0  # 200 * mean(0, 1/5, 1/5, 2/10)
    assert m["mape"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert m["r2"] == pytest.approx(1 - 6 / 5)


def test_mae_and_smape_are_rounded_per_run():
    m = lstm.metrics(np.array([10.0, 20.0]), np.array([10.0126, 20.0]))
    assert m["mae"] == 0.01 and m["mse"] == pytest.approx(0.0126 ** 2 / 2)
    assert m["smape"] == round(200 * (0.0126 / 20.0126) / 2, 2) == 0.06


# ------------------------------------------------------------------------------------ bad CSVs
@pytest.mark.parametrize(("text", "error", "words"), [
    ("", datasets.MissingColumns, "empty"),
    ("timestamp,CPU\n2024-01-01 00:00:00,1\n", datasets.MissingColumns, "MEM"),
    (ramp_csv(40).replace(",7,114", ",seven,114"), datasets.NonNumericValue, "line 9, column CPU"),
    (ramp_csv(40).replace(",7,114", ",7,"), datasets.NonNumericValue, "column MEM"),
    (ramp_csv(20), datasets.TooFewRows, "20 data rows"),
])
def test_bad_csvs_are_refused_with_a_clear_error(text, error, words):
    with pytest.raises(error, match=words):
        LSTMTrainer(text)
    assert issubclass(error, ValueError)


@pytest.mark.slow  # the backend imports torch
def test_bad_csv_error_reaches_an_offloading_client_by_type(client):
    Trainer = storage_api.stub(CLASS)
    with pytest.raises(datasets.NonNumericValue, match="line 9"):
        Trainer(ramp_csv(40).replace(",7,114", ",x,114")).make_persistent(backend="b0")


# ------------------------------------------------------------------------- local vs offloaded
@pytest.mark.slow
def test_offloaded_training_equals_local_training_and_streams_progress(client):
    csv_text = datasets.to_csv(datasets.generate(seed=4))
    local = LSTMTrainer(csv_text, epochs=2, passes=2, device="cpu")
    seen_local: list[dict] = []
    with storage_api.on_progress(seen_local.append):
        expected = local.train(7)

    remote = storage_api.stub(CLASS)(csv_text, epochs=2, passes=2, device="cpu")
    remote.make_persistent(backend="b0")  # one backend of the shared cluster loads torch, not two
    seen: list[dict] = []
    with storage_api.on_progress(seen.append):
        got = remote.train(7)
    assert got["metrics"] == expected["metrics"] and got["train_loss"] == expected["train_loss"]
    assert got["eval_loss"] == expected["eval_loss"] and got["model_size_mb"] == expected["model_size_mb"]
    assert [(e["pass"], e["epoch"]) for e in seen] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert seen == seen_local
    assert [e["loss"] for e in seen if e["pass"] == 2] == got["train_loss"]
    assert got["memory_mb"] > 50 and 0 < got["train_time"] < got["server_time"] and got["eval_time"] > 0
    assert remote.evaluate()["metrics"] == local.evaluate()["metrics"] == got["metrics"]
    lags = ([31.0, 32.0, 30.5, 33.0, 31.2, 32.1], [80.0, 80.5, 81.0, 80.7, 81.2, 81.5])
    prediction, seconds = remote.predict(*lags)
    assert prediction == local.predict(*lags)[0] and all(isinstance(v, float) for v in prediction)
    remote.delete_persistent()


@pytest.mark.slow
def test_one_pass_differs_from_two():
    one = LSTMTrainer(epochs=1, passes=1, device="cpu").train(0)
    two = LSTMTrainer(epochs=1, passes=2, device="cpu").train(0)
    assert one["passes"] == 1 and two["passes"] == 2 and one["metrics"] != two["metrics"]


# ----------------------------------------------------------------------------------- thin client
@pytest.mark.slow
def test_thin_client_app_end_to_end_without_torch_numpy_pandas(cluster, tmp_path):
    csv_path = tmp_path / "series.csv"
    csv_path.write_text(datasets.to_csv(datasets.generate(seed=5)))
    code = BLOCKER + textwrap.dedent(f"""
        import runpy
        sys.argv = ["lstm_offload.py", "--csv", {str(csv_path)!r}, "--epochs", "2", "--seed", "3", "--json",
                    "--backend", "b0"]
        runpy.run_path("apps/lstm_offload.py", run_name="__main__")
    """)
    proc = run_python(code, env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["deployment"] == "configured" and out["heavy_modules"] == []
    assert out["progress_events"] == 4 and out["last_event"]["epoch"] == 2 and out["last_event"]["pass"] == 2
    assert "training on the backend" in proc.stderr  # the tqdm bar
    assert 0 < out["client_rss_mb"] < 60
    assert out["client_total"] >= out["call_time"] >= out["server_time"] > out["train_time"] > 0
    assert out["overhead"] == pytest.approx(out["client_total"] - out["train_time"] - out["eval_time"])
    assert 0 < out["first_pass_time"] and out["server_time"] > out["first_pass_time"] + out["train_time"]
    client = cluster.client()
    try:  # the app deleted the object it built (neither --keep nor --alias)
        with pytest.raises(ObjectNotFound):
            client.meta.object(out["object_id"])
    finally:
        client.close()
    # the same training, locally, gives the same numbers (unless the backend trains on a GPU)
    if out["device"] == "cpu":
        local = LSTMTrainer(csv_path.read_text(), epochs=2, passes=2, device="cpu").train(3)
        assert out["metrics"] == local["metrics"]


@pytest.mark.slow  # trains on the backend
def test_thin_client_summary_names_each_figure_and_keep_keeps_the_object(cluster, client):
    proc = run_python(BLOCKER + textwrap.dedent("""
        import runpy
        sys.argv = ["lstm_offload.py", "--epochs", "1", "--backend", "b1", "--keep", "--no-progress"]
        runpy.run_path("apps/lstm_offload.py", run_name="__main__")
    """), env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("offloaded to the configured deployment (") and "1 epochs x 2 passes" in lines[0]
    assert re.fullmatch(r"  client:  wall [\d.]+ s = start [\d.]+ s \(connect, object built on the backend\) \+ "
                        r"train call [\d.]+ s; RSS [\d.]+ MiB \(peak [\d.]+\)", lines[1]), lines[1]
    assert re.fullmatch(r"  backend: train call [\d.]+ s = first pass [\d.]+ s \(untimed, as the paper's\) \+ "
                        r"timed pass [\d.]+ s \+ eval [\d.]+ s \+ data and metrics [\d.]+ s; memory [\d.]+ MiB "
                        r"\(mean RSS while training the first pass\)", lines[2]), lines[2]
    assert re.fullmatch(r"  offloading overhead: [\d.]+ ms \(the client's time for the train call beyond the "
                        r"backend's work for it\)", lines[3]), lines[3]
    kept = re.fullmatch(r"  kept the trained object: id ([0-9a-f-]{36})", lines[4])
    assert kept, lines[4]
    assert client.meta.object(kept[1]).class_path == "workflows.models.trainer.LSTMTrainer"
    client.get_by_id(kept[1]).delete_persistent()


@pytest.mark.slow
def test_trained_model_survives_a_backend_restart(own_cluster, own_client):
    trainer = LSTMTrainer(epochs=1, passes=1, device="cpu")
    trainer.make_persistent(backend="b0")
    trainer.train(1)
    lags = ([31.0, 32.0, 30.5, 33.0, 31.2, 32.1], [80.0, 80.5, 81.0, 80.7, 81.2, 81.5])
    before = trainer.predict(*lags)[0]
    own_cluster.kill("b0")
    own_cluster.restart("b0")
    fresh = own_cluster.client()
    previous = _context.install(fresh)
    try:  # the weights were persisted; the torch module is rebuilt from them
        assert fresh.get_by_id(trainer.getID()).predict(*lags)[0] == before
    finally:
        _context.install(previous)
        fresh.close()


@pytest.mark.slow  # the backend imports torch
def test_thin_client_app_reports_a_bad_csv(cluster, tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(ramp_csv(40).replace(",7,114", ",n/a,114"))
    code = BLOCKER + textwrap.dedent(f"""
        import runpy
        sys.argv = ["lstm_offload.py", "--csv", {str(csv_path)!r}, "--epochs", "1", "--backend", "b0"]
        runpy.run_path("apps/lstm_offload.py", run_name="__main__")
    """)
    proc = run_python(code, env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 2, proc.stderr
    assert "NonNumericValue" in proc.stderr and "line 9, column CPU" in proc.stderr
