from instructglm.cli import main

raise SystemExit(main())
