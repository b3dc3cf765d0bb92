from lancy_trl.cli import main

main()
