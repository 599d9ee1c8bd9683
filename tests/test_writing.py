"""onnx_gradcam.writing: a file written atomically appears whole, under its name, as ``open`` would make it
(what an interrupted write leaves is tested with the command line's bad input, test_cli_bad_input.py)."""

from __future__ import annotations

from onnx_gradcam.writing import atomic_file


def test_a_file_written_atomically_replaces_the_old_one_with_the_usual_permissions(tmp_path):
    target = tmp_path / "map.npy"
    target.write_bytes(b"old")
    reference = tmp_path / "plain"
    reference.write_bytes(b"")
    with atomic_file(str(target)) as handle:
        handle.write(b"new")
        assert target.read_bytes() == b"old"  # not before the block ends
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target, reference]
    assert target.stat().st_mode == reference.stat().st_mode
