"""The test suite, laid out by tier (see the README's Tests section): unit/, integration/, static/,
faults/, fuzz/, e2e/; helpers in support/. Every folder is a package, so pytest imports each test
module by its full name (tests.unit.core.test_manager) with the repository root on sys.path, and
test modules import helpers absolutely from tests.support."""
