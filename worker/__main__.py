from pausepoint.worker.cli import main

main()
