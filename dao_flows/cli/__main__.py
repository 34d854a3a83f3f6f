from dao_flows.cli import app

app()
