from heatwatch.cli import main

raise SystemExit(main())
