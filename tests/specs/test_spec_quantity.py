import pytest

from specs.quantity import format_quantity, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("20Gi", 20 * 2**30),
        ("1Ti", 2**40),
        ("1G", 10**9),
        ("1k", 1000),
        ("1K", 1000),
        ("1.5Gi", 3 * 2**29),
        ("0", 0),
        (" 64Mi ", 64 * 2**20),
        (4096, 4096),
        ("4096", 4096),
    ],
)
def test_parse_quantity(text: int | str, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "expected a size like 512Mi, 20Gi, 1G or a plain number of bytes, got 'lots'"),
        ("10GB", "did you mean '10G'?"),
        ("512MiB", "did you mean '512Mi'?"),
        ("-1Gi", "got '-1Gi'"),
        ("1.5", "'1.5' is not a whole number of bytes"),
        ("Gi", "got 'Gi'"),
        ("", "got ''"),
        (-5, "got a negative number -5"),
        (True, "got True"),
        (1.5, "got float 1.5"),
    ],
)
def test_parse_quantity_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_quantity(text)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (512 * 2**20, "512Mi"), (2**30, "1Gi"), (10**9, "1G"), (1500, "1500"), (3 * 2**29, "1536Mi")],
)
def test_format_quantity(size: int, text: str) -> None:
    assert format_quantity(size) == text
    assert parse_quantity(text) == size
