from vkit.cli import main

raise SystemExit(main())
