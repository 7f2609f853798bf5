"""`run --source https://...` takes the TLS and token options down to the source."""
from agent.cli.daemon import source_options
from agent.cli.main import build_parser
from agent.sources import open_source


def test_tls_and_token_flags_reach_the_source(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    args = build_parser().parse_args([
        "run", "--source", "https://127.0.0.1:9/state", "--ca-file", "/etc/ssl/certs/ca-certificates.crt",
        "--token-file", str(token)])
    opts = source_options(args)
    assert opts == {"ca_file": "/etc/ssl/certs/ca-certificates.crt", "token_file": str(token)}
    src = open_source(args.source, **opts)
    try:
        assert src.opts.ca_file == opts["ca_file"] and src.opts.token_file == str(token)
    finally:
        src.close()


def test_file_source_needs_no_options():
    args = build_parser().parse_args(["run", "-c", "/etc/secgroup-agent/config.yaml"])
    assert source_options(args) == {}


def test_records_options_of_run():
    from agent.cli.records import record_options
    parse = build_parser().parse_args
    assert record_options(parse(["run", "-c", "f.yaml"]), "hv") is None
    o = record_options(parse(["run", "-c", "f.yaml", "--records"]), "hv")
    assert (o.host, o.group, o.syslog, o.log_file, o.flows) == ("hv", 2701, True, None, False)
    o = record_options(parse(["run", "-c", "f.yaml", "--log-file", "/var/log/sg.jsonl", "--flows", "--group", "7"]), "hv")
    assert (o.group, o.syslog, o.log_file, o.flows) == (7, False, "/var/log/sg.jsonl", True)
