from sslseg.cli import main

raise SystemExit(main())
