from instructglm.cli import run

run()
