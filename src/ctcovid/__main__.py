from ctcovid.cli import main

raise SystemExit(main())
