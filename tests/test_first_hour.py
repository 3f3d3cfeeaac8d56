"""What a newcomer meets in the first hour (issue 13): each stumble seen, with what the user now sees."""
import pytest


@pytest.mark.parametrize("path,error", [("examples/mpl.onnx", FileNotFoundError), ("examples/", IsADirectoryError)])
def test_a_mistyped_model_path_is_the_callers_oserror_naming_it(daemon, client, path, error):
    """Was: MemserveError UNKNOWN: Exception iterating requests! (the file opened inside the upload)."""
    for call in (client.load, client.query_size, client.plan):
        with pytest.raises(error, match=path.rstrip("/")):
            call(path)
    assert client.list_models() == []
