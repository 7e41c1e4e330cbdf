import logging, threading, time, sys, faulthandler
from tests.integration.test_kafka_engine import kafka_stack, workspace, connectors
from tests.integration.test_kafka_engine import _seed, _changes, _current_lsn

def test_debug(kafka_stack, workspace):
    settings, home = workspace
    _seed(settings)
    with connectors(kafka_stack, settings) as regs:
        regs.wait_running()
        _changes(settings)
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        logging.getLogger("bankde.cdc.engines.kafka").setLevel(logging.DEBUG)
        faulthandler.dump_traceback_later(40, exit=True)
        from bankde.cdc import api
        from bankde.warehouse.session import open_session
        s = regs.settings.model_copy(update={"wh_dir": home / "warehouse", "wh_prefix": "kaf_"})
        with open_session(s) as session:
            res = api.sync(s, api.open_sink(s, session), engine="kafka", show_progress=False)
        print(res.to_dict())
