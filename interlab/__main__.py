from interlab.cli import main

raise SystemExit(main())
