from ipex_fleet.cli import main

raise SystemExit(main())
