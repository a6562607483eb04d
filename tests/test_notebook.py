"""The Colab notebook executes top to bottom (tiny configuration, CPU), so it cannot rot.
It runs outside the checkout, so it needs only the installed library (no experiments/)."""

import nbclient
import nbformat

from tests.conftest import REPO


def test_colab_notebook_runs(data_dir, tmp_path, monkeypatch):
    nb = nbformat.read(REPO / "experiments" / "colab_tpu.ipynb", as_version=4)
    monkeypatch.setenv("FFJAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("FFJAX_DATA_DIR", str(data_dir))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    assert "test error: goodness readout" in text
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 3
    assert (tmp_path / "runs" / "colab-mnist" / "results.json").exists()
